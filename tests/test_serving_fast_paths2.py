"""More batch-1 shortcuts of the endpoint, each giving what the general code gives: a
request head answered from the cache of parsed heads is the head a parse makes (and a
malformed one is refused every time), the model pool keyed by the caller's resolved
Path finds, pins and evicts as before, and the busy poll's poll(0) sees a request or a
closed connection as the failing recv did. Real endpoint and models where it matters."""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.errors import ModelError
from edge_agent.profiles import Profile
from edge_agent.runtime.backend import quantize
from edge_agent.runtime.model import find_models, load_model
from edge_agent.runtime.onnx_backend import OnnxBackend
from edge_agent.runtime.pool import ModelPool, file_meter
from edge_agent.serving import http, protocol, wire
from edge_agent.serving.http import Endpoint
from edge_agent.serving.protocol import InferRequest, ModelSpec, ProtocolError, parse_infer
from tests.agentutil import MODELS
from tests.serving_inprocess import running_endpoint

TOKEN = "fast-paths-2-token-0123456789"

HEADS = [
    b"GET /v2/health/live HTTP/1.1",
    b"GET /v2 HTTP/1.0",
    b"GET /v2 HTTP/1.0\r\nConnection: keep-alive",
    b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n"
    b"Authorization: Bearer abc\r\nConnection: close",
    b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue",
    b"POST /v2/models/m/infer HTTP/1.1\r\nTransfer-Encoding: chunked",
    b"POST /x HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\nContent-Length: 3",
]
BAD = [
    b"GET /v2 HTTP/2.0",
    b"get /v2 HTTP/1.1",
    b"GET /v2 HTTP/1.1\r\n folded: line",
    b"GET /v2 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
    b"GET /v2 HTTP/1.1\r\nContent-Length: -1",
    b"GET /v2 HTTP/1.1" + b"\r\nA: b" * (wire.MAX_HEADERS + 1),
]


@pytest.mark.parametrize("raw", HEADS)
def test_a_head_from_the_cache_is_the_head_a_parse_makes(raw: bytes) -> None:
    wire._heads.clear()
    fresh = wire._parse_head(raw)
    first = wire.parse_head(raw)
    again = wire.parse_head(bytes(raw))  # other bytes objects, same bytes: the cache
    assert first == fresh
    assert again is first


@pytest.mark.parametrize("raw", BAD)
def test_a_malformed_head_is_refused_every_time_and_never_kept(raw: bytes) -> None:
    wire._heads.clear()
    statuses = []
    for _ in range(3):
        with pytest.raises(ProtocolError) as e:
            wire.parse_head(raw)
        statuses.append(e.value.status)
    assert len(set(statuses)) == 1
    assert statuses[0] in (400, 431, 505)
    assert raw not in wire._heads


def test_the_head_cache_stays_bounded_and_keeps_no_long_heads() -> None:
    for i in range(3 * wire.HEADS_KEPT):
        wire.parse_head(f"GET /v2/models/m{i} HTTP/1.1".encode())
    assert len(wire._heads) <= wire.HEADS_KEPT
    long = b"GET /v2 HTTP/1.1\r\nX-Pad: " + b"a" * wire.HEAD_KEPT_MAX
    assert wire.parse_head(long).headers["x-pad"] == "a" * wire.HEAD_KEPT_MAX
    assert long not in wire._heads


def _variant(name: str) -> Path:
    return (MODELS / name).resolve()


def test_the_pool_keys_an_entry_by_the_callers_resolved_path(tmp_path: Path) -> None:
    pool = ModelPool(Profile(name="t", model_memory_mb=64), meter=file_meter)
    key = _variant("skab-ae-fp32-onnx")
    m = pool.acquire(key, "a")
    assert [e.key for e in pool.entries()] == [key]
    assert pool.entries()[0].key is key  # found by identity from now on
    # other spellings of the same directory find the same entry
    link = tmp_path / "link"
    link.symlink_to(key)
    assert pool.acquire(link, "b") is m
    assert pool.acquire(Path(str(key)), "c") is m
    assert pool.acquire(str(key), "d") is m  # type: ignore[arg-type]  # a str, as callers may
    assert pool.has(key)
    assert pool.has(link)
    assert pool.entries()[0].users == {"a", "b", "c", "d"}
    for u in "abcd":
        pool.release(u)
    assert not pool.entries()[0].pinned


def test_an_entry_keyed_by_an_unresolved_path_is_keyed_resolved(tmp_path: Path) -> None:
    pool = ModelPool(Profile(name="t", model_memory_mb=64), meter=file_meter)
    link = tmp_path / "link"
    link.symlink_to(_variant("skab-ae-fp32-onnx"))
    pool.acquire(link, "a")
    assert [e.key for e in pool.entries()] == [_variant("skab-ae-fp32-onnx")]


def test_the_pool_still_evicts_an_idle_model_keyed_by_the_callers_path() -> None:
    a, b = _variant("skab-ae-fp32-onnx"), _variant("vibration-ae-fp32-onnx")
    sizes = [(d / "model.onnx").stat().st_size / 2**20 for d in (a, b)]
    budget = max(sizes) + min(sizes) / 2  # either alone, never both
    pool = ModelPool(Profile(name="t"), budget_mb=budget, meter=file_meter)
    pool.acquire(a, "x")
    with pytest.raises(Exception, match="model_memory_mb"):
        pool.acquire(b, "y")  # a is pinned: never evicted
    pool.release("x")
    pool.acquire(b, "y")  # a idle: evicted for b
    assert [e.key for e in pool.entries()] == [b]
    assert pool.evictions == 1
    assert not pool.has(a)


# -- the busy poll on a real endpoint -------------------------------------------------


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path, TOKEN, rate_per_s=1_000_000.0) as ep:
        yield ep


LIVE = b"GET /v2/health/live HTTP/1.1\r\n\r\n"


def _answer(s: socket.socket) -> bytes:
    got = b""
    while b"\r\n\r\n" not in got or not got.endswith(b"}"):
        chunk = s.recv(65536)
        assert chunk, "closed"
        got += chunk
    return got


def test_requests_that_follow_their_answers_at_once_are_answered(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next request within BUSY_POLL_S of each answer (made long, so that a loaded
    machine's client is quick enough): found by the poll, and answered."""
    monkeypatch.setattr(http, "BUSY_POLL_S", 1.0)
    polled = []
    orig = http._Connection._poll

    def spy(self: http._Connection) -> bytes | None:
        got = orig(self)
        polled.append(got is not None)
        return got

    http._Connection._poll = spy  # type: ignore[method-assign]
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(200):
                s.sendall(LIVE)
                assert _answer(s).startswith(b"HTTP/1.1 200 OK")
    finally:
        http._Connection._poll = orig  # type: ignore[method-assign]
    assert any(polled), "no request was found by the busy poll"


def test_a_client_closing_while_polled_ends_its_connection(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close right after an answer (while the poll runs) is seen: the connection's
    thread ends and gives its slot back."""
    monkeypatch.setattr(http, "BUSY_POLL_S", 1.0)
    slots = endpoint.cfg.max_connections
    for _ in range(3 * slots):
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
            for _ in range(3):
                s.sendall(LIVE)
                assert _answer(s).startswith(b"HTTP/1.1 200 OK")
    deadline = time.monotonic() + 10
    while endpoint._slots._value < slots and time.monotonic() < deadline:
        time.sleep(0.01)
    assert endpoint._slots._value == slots


def test_the_poll_watches_its_own_socket(endpoint: Endpoint) -> None:
    a, b = socket.socketpair()
    with a, b:
        c = http._Connection(endpoint, a)
        assert c._poller().poll(0) == []
        b.sendall(b"x")
        assert c._poller().poll(0) == [(a.fileno(), select.POLLIN)]
        assert c._poller() is c._poller()


def test_no_file_descriptors_are_left_open_by_polled_connections(endpoint: Endpoint) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
            for _ in range(3):
                s.sendall(LIVE)
                _answer(s)
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/fd")) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(os.listdir("/proc/self/fd")) <= before + 2


# -- JSON tensor data: FP32 without looking at each value's type ---------------------

SPEC4 = ModelSpec("m", "m", "m", 1, "onnxruntime_onnx", "window", 2, 2, 1.0)


def _body4(data: list[Any], **doc: Any) -> bytes:
    tensor = {"name": "window", "shape": [1, 2, 2], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor], **doc}).encode()


DATA: list[list[Any]] = [
    [0.25, -1.5, 3e-3, 7.0],
    [1, 2, 3, 4],  # ints: 1's type looked at
    [5, 6, 7, 8],
    [0.0, 2.5, 3.5, 4.5],  # a zero: its type looked at
    [1.0, 2.5, 3.5, 4.5],
    [0, 1, 0.0, 1.0],  # all four looked at
    [-0.0, 2.5, 3.5, 4.5],
    [2**63 + 12345, -(2**70), 2**100, 3.0],  # big ints: one rounding to FP32 either way
    [1e-46, 7e-46, 1.2e-38, 3.4028234e38],  # FP32's edges
    [3e38, -3e38, 1e20, 0.5],  # squares overflow: accepted
    [1e-40, 2.5, 3.5, 4.5],  # subnormal
]
REFUSED: list[tuple[list[Any], str]] = [
    ([True, 2.5, 3.5, 4.5], "must be numbers"),
    ([2.5, False, 3.5, 4.5], "must be numbers"),
    ([0.0, 1.0, False, 0], "must be numbers"),  # a bool among zeros and ones
    ([1, True, 1, 1], "must be numbers"),
    ([2.5, "3.5", 3.5, 4.5], "must be numbers"),
    ([2.5, None, 3.5, 4.5], "NaN"),
    ([2.5, 3.5, 4.5, 1e39], "float32"),
    ([2.5, 3.5, 4.5, -1e300], "float32"),
    ([2.5, 3.5, 4.5, 10**400], "float32"),
    ([2.5, 3.5, 4.5, {"a": 1}], "must be numbers"),
    ([2.5, 3.5, 4.5, [1]], "must be numbers"),
    ([2.5, 3.5, 4.5, 3.4028235677973366e38], "float32"),  # rounds to infinity
]


def _long_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """The type of every value looked at, as before the shortcut."""
    monkeypatch.setattr(protocol, "_fp32_numbers", lambda _flat: None)


@pytest.mark.parametrize("data", DATA)
def test_json_data_reads_as_the_long_way_reads_it(
    data: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _body4(data)
    fast = parse_infer(body, SPEC4)
    with monkeypatch.context() as m:
        _long_way(m)
        slow = parse_infer(body, SPEC4)
    assert fast.windows.dtype == slow.windows.dtype == np.float32
    assert fast.windows.shape == slow.windows.shape == (1, 2, 2)
    assert fast.windows.tobytes() == slow.windows.tobytes()
    assert fast == InferRequest(None, fast.windows, False, None, None)


@pytest.mark.parametrize(("data", "words"), REFUSED)
@pytest.mark.parametrize("long_way", [False, True])
def test_json_data_that_is_not_numbers_is_refused_in_the_same_words(
    data: list[Any], words: str, long_way: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if long_way:
        _long_way(monkeypatch)
    with pytest.raises(ProtocolError) as e:
        parse_infer(_body4(data), SPEC4)
    assert e.value.status == 400
    assert words in e.value.message


def test_a_bool_elsewhere_in_the_body_changes_nothing() -> None:
    body = _body4([0.25, -1.5, 3e-3, 7.0], parameters={"alarm": True})
    req = parse_infer(body, SPEC4)
    assert req.want_alarm is True
    np.testing.assert_array_equal(
        req.windows.reshape(-1), np.array([0.25, -1.5, 3e-3, 7.0], np.float32)
    )


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"id": "r1"},
        {"id": 7},
        {"parameters": {}},
        {"parameters": None},
        {"outputs": []},
        {"outputs": [{"name": "alarm"}]},
        {"parameters": {"timeout": 5000, "binary_data_output": True, "stream": "s"}},
        {"parameters": {"alarm": False}, "outputs": [{"name": "anomaly_score"}]},
    ],
)
def test_the_usual_requests_shortcut_reads_the_same_request(doc: dict[str, Any]) -> None:
    req = parse_infer(_body4([0.25, -1.5, 3e-3, 7.0], **doc), SPEC4)
    params = doc.get("parameters") or {}
    outputs = doc.get("outputs")
    want_score, want_alarm = protocol._outputs_wanted(params, outputs)
    assert req.id == (None if "id" not in doc else str(doc["id"]))
    assert req.want_alarm == want_alarm
    assert req.stream == params.get("stream")
    assert req.timeout_s == protocol._timeout(params)
    assert req.binary_outputs == protocol._binary_outputs(params, outputs, want_score, want_alarm)


@pytest.mark.parametrize("shape", [[1, 2], [1, 2, 2, 1], [True, 2, 2], [1, 2.0, 2], [1, 2, "2"]])
def test_a_shape_that_is_not_three_ints_is_still_refused(shape: list[Any]) -> None:
    tensor = {"name": "window", "shape": shape, "datatype": "FP32", "data": [2.5] * 4}
    with pytest.raises(ProtocolError) as e:
        parse_infer(json.dumps({"inputs": [tensor]}).encode(), SPEC4)
    assert "shape" in e.value.message


# -- one window through onnxruntime's I/O binding --------------------------------------

ONNX = sorted(c.name for c in find_models(MODELS) if c.backend == "onnx")


@pytest.mark.parametrize("name", ONNX)
def test_one_window_through_the_binding_scores_as_the_plain_run(name: str) -> None:
    m = load_model(MODELS / name)
    backend = m.backend
    assert isinstance(backend, OnnxBackend)
    assert backend._one is not None, "every bundled ONNX model has static window shapes"
    xs = m.normalize(m.card.golden.inputs.astype(np.float32))
    for x in xs[:8]:
        one = x[None]
        xin = one if backend.input_quant is None else quantize(one, backend.input_quant)
        plain = backend._session_run(
            backend._output_names, {backend.input_name: xin}, backend._run_options
        )[0]
        bound = backend._one(xin)
        assert bound is not None
        assert bound.dtype == plain.dtype
        assert bound.tobytes() == plain.tobytes()
        y1, y2 = backend._run(xin), backend._run(xin)
        assert y1 is not y2, "each call's output is its own (not the bound buffer)"
        assert y1.tobytes() == plain.tobytes()
    # the golden vectors still reproduce through the whole path, one at a time
    got = np.concatenate([m.scores(w[None]) for w in m.card.golden.inputs.astype(np.float32)])
    np.testing.assert_allclose(got, m.card.golden.scores, rtol=m.card.golden.rtol, atol=1e-6)


def test_another_dtype_or_batch_takes_the_plain_run() -> None:
    m = load_model(MODELS / "vibration-ae-fp32-onnx")
    backend = m.backend
    assert isinstance(backend, OnnxBackend)
    assert backend._one is not None
    x = np.zeros((1, *backend._shape), np.float32)
    assert backend._one(x.astype(np.float64)) is None
    assert backend._one(np.zeros((2, *backend._shape), np.float32)) is None
    with pytest.raises(ModelError):  # the plain run's refusal, as before
        backend.infer(x.astype(np.float64))
    two = np.stack([x[0], x[0] + 1])
    np.testing.assert_array_equal(backend.infer(two)[1:], backend.infer(two[1:]))


def test_the_binding_follows_bind_and_unbind() -> None:
    m = load_model(MODELS / "vibration-ae-fp32-onnx")
    backend = m.backend
    assert isinstance(backend, OnnxBackend)
    x = m.normalize(m.card.golden.inputs[:1].astype(np.float32))
    before = backend.infer(x)
    backend.unbind()
    assert backend._one is None
    assert backend.infer(x).tobytes() == before.tobytes()  # a CPU session of its own
    backend.bind(["CPUExecutionProvider"])
    assert backend._one is not None
    assert backend.infer(x).tobytes() == before.tobytes()


@pytest.mark.parametrize(
    "flat",
    [
        [0.0, 2.5, 3.5, 4.5],
        [1, 2, 3, 4],
        [0, 1, 0.0, 1.0],
        [0.0] * 256,  # every value looked at
        [float(i % 7 - 3) for i in range(256)],  # integer readings
    ],
)
def test_numbers_that_read_zero_or_one_take_the_shortcut(flat: list[Any]) -> None:
    """Only a value that reads exactly 0 or 1 can be a bool's: those values' types are
    looked at, and numbers take the shortcut (not the long way after it)."""
    got = protocol._fp32_numbers(flat)
    assert got is not None
    assert got.tobytes() == np.asarray(flat, dtype=np.float32).tobytes()


@pytest.mark.parametrize(
    "flat", [[True], [False] * 4, [0.0] * 255 + [False], [2.5, 1, True, 0.0], [1.0, True]]
)
def test_a_bool_anywhere_leaves_the_shortcut(flat: list[Any]) -> None:
    assert protocol._fp32_numbers(flat) is None
