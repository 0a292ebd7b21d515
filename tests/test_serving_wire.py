"""The endpoint's HTTP/1.1 handling at the byte level: the head parser alone, and raw
sockets against a real in-process Endpoint (catalogue, model pool, scheduler worker):
pipelined requests, heads split across reads, oversized or malformed heads, a missing
or invalid Content-Length, Expect: 100-continue, a client closing mid-body."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.runtime.model import find_models
from edge_agent.serving import http
from edge_agent.serving.http import Endpoint
from edge_agent.serving.protocol import ProtocolError
from edge_agent.serving.wire import MAX_HEAD, parse_head
from tests.agentutil import MODELS
from tests.serving_inprocess import running_endpoint

TOKEN = "wire-test-token-0123456789"
MODEL = "skab-zsq-int8-onnx"
CARD = next(c for c in find_models(MODELS) if c.name == MODEL)


# -- the parser alone ------------------------------------------------------------------
def test_head_fields_keep_alive_and_expect() -> None:
    h = parse_head(
        b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
        b"AUTHORIZATION: Bearer t\r\nExpect: 100-continue\r\nX-Twice: 1\r\nX-Twice: 2"
    )
    assert (h.method, h.target, h.content_length) == ("POST", "/v2/models/m/infer?x=1", 12)
    assert h.headers["authorization"] == "Bearer t"
    assert h.headers["x-twice"] == "1"  # the first, as http.server's headers.get gave
    assert h.keep_alive
    assert h.expect_continue
    assert not h.chunked
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: close").keep_alive
    assert not parse_head(b"GET / HTTP/1.0").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive").keep_alive
    assert not parse_head(b"GET / HTTP/1.0\r\nExpect: 100-continue").expect_continue
    assert parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked").chunked
    assert parse_head(b"GET / HTTP/1.1").content_length is None


@pytest.mark.parametrize(
    ("head", "status", "words"),
    [
        (b"GET /v2/health/live", 400, "request line"),
        (b"GET  /v2 HTTP/1.1", 400, "request line"),
        (b"get /v2 HTTP/1.1", 400, "request line"),
        (b"GET v2 HTTP/1.1", 400, "request line"),
        (b"GET /v2 HTTX/1.1", 400, "request line"),
        (b"GET /v2 HTTP/2.0", 505, "HTTP/2.0"),
        (b"GET /v2 HTTP/1.1\r\nno colon here", 400, "header line"),
        (b"GET /v2 HTTP/1.1\r\nA: b\r\n folded", 400, "header line"),
        (b"GET /v2 HTTP/1.1\r\nBad Name: x", 400, "header line"),
        (b"POST /v2 HTTP/1.1\r\nContent-Length: abc", 400, "Content-Length"),
        (b"POST /v2 HTTP/1.1\r\nContent-Length: -5", 400, "Content-Length"),
        (b"POST /v2 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2", 400, "two"),
        (b"GET /v2 HTTP/1.1" + b"\r\nA: b" * 101, 431, "header lines"),
    ],
)
def test_malformed_heads_are_refused_saying_what(head: bytes, status: int, words: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_head(head)
    assert e.value.status == status
    assert words in e.value.message


# -- raw sockets against a real endpoint ---------------------------------------------------
@pytest.fixture
def endpoint(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    extra: dict[str, Any] = getattr(request, "param", {})
    with running_endpoint(tmp_path, TOKEN, deadline_ms=10000, **extra) as ep:
        yield ep


def _connect(ep: Endpoint) -> socket.socket:
    return socket.create_connection(("127.0.0.1", ep.port), timeout=30)


def _read_response(s: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from `s` (bytes past it stay in `buf`): (status, headers, body)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a response: {bytes(buf)!r}"
        buf += chunk
    i = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:i]).decode("latin-1").split("\r\n")
    del buf[: i + 4]
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = int(headers["content-length"])
    while len(buf) < n:
        chunk = s.recv(65536)
        assert chunk, "connection closed mid-body"
        buf += chunk
    body = bytes(buf[:n])
    del buf[:n]
    return int(lines[0].split(" ")[1]), headers, body


def _closed_by_server(s: socket.socket, timeout: float = 30.0) -> bool:
    """The server closed the connection (end of stream, or a reset) within `timeout`."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _infer_body() -> bytes:
    x = CARD.golden.inputs[:2]
    inp = {"name": CARD.input.name, "shape": list(x.shape), "datatype": "FP32"}
    return json.dumps({"inputs": [{**inp, "data": x.ravel().tolist()}]}).encode()


def _infer_head(n: int, *extra: str) -> bytes:
    lines = [
        f"POST /v2/models/{MODEL}/infer HTTP/1.1",
        "Host: x",
        f"Authorization: Bearer {TOKEN}",
        f"Content-Length: {n}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"


def test_pipelined_requests_are_answered_in_order(endpoint: Endpoint) -> None:
    body = _infer_body()
    with _connect(endpoint) as s:
        s.sendall(LIVE + _infer_head(len(body)) + body + b"\r\n" + LIVE)
        buf = bytearray()
        assert _read_response(s, buf)[::2] == (200, b'{"live": true}')
        status, headers, doc = _read_response(s, buf)
        assert status == 200, doc
        assert headers["content-type"] == "application/json"
        assert json.loads(doc)["outputs"][0]["shape"] == [2]
        assert _read_response(s, buf)[::2] == (200, b'{"live": true}')


def test_a_head_split_across_reads(endpoint: Endpoint) -> None:
    body = _infer_body()
    data = _infer_head(len(body)) + body
    with _connect(endpoint) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cuts = [0, 3, 17, 60, len(data) - len(body) - 2, len(data) - 5, len(data)]
        for a, b in itertools.pairwise(cuts):
            s.sendall(data[a:b])
            time.sleep(0.02)  # separate segments (the test holds without: bytes are bytes)
        status, _, doc = _read_response(s, bytearray())
        assert status == 200, doc


def test_an_oversized_head_is_431_and_closed(endpoint: Endpoint) -> None:
    with _connect(endpoint) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD + 10))
        status, headers, doc = _read_response(s, bytearray())
        assert status == 431
        assert "head" in json.loads(doc)["error"]
        assert headers["connection"] == "close"
        assert _closed_by_server(s)


@pytest.mark.parametrize(
    ("head", "status", "words"),
    [
        (b"GARBAGE\r\n\r\n", 400, "request line"),
        (b"POST /v2/models/m/infer HTTP/1.1\r\nContent-Length: x1\r\n\r\n", 400, "Content-Length"),
        (b"GET /v2/health/live HTTP/3\r\n\r\n", 505, "HTTP/3"),
    ],
)
def test_malformed_heads_get_the_error_form_and_a_close(
    endpoint: Endpoint, head: bytes, status: int, words: str
) -> None:
    with _connect(endpoint) as s:
        s.sendall(head)
        got, headers, doc = _read_response(s, bytearray())
        assert got == status
        assert list(json.loads(doc)) == ["error"]
        assert words in json.loads(doc)["error"]
        assert headers["connection"] == "close"
        assert _closed_by_server(s)
    with _connect(endpoint) as s:  # and the endpoint serves on
        s.sendall(LIVE)
        assert _read_response(s, bytearray())[0] == 200


def test_infer_without_content_length_is_411_and_closed(endpoint: Endpoint) -> None:
    with _connect(endpoint) as s:
        head = _infer_head(0).replace(b"Content-Length: 0\r\n", b"")
        s.sendall(head)
        status, _, doc = _read_response(s, bytearray())
        assert status == 411
        assert "Content-Length" in json.loads(doc)["error"]
        assert _closed_by_server(s)


def test_expect_100_continue_gets_continue_before_the_body(endpoint: Endpoint) -> None:
    body = _infer_body()
    with _connect(endpoint) as s:
        s.sendall(_infer_head(len(body), "Expect: 100-continue"))
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        assert bytes(buf).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        del buf[: len(b"HTTP/1.1 100 Continue\r\n\r\n")]
        s.sendall(body)
        status, _, doc = _read_response(s, buf)
        assert status == 200, doc
        # refused before its body: no 100, the refusal, and a close (the body never comes)
        s.sendall(_infer_head(len(body), "Expect: 100-continue").replace(TOKEN.encode(), b"x"))
        status, headers, doc = _read_response(s, buf)
        assert status == 401
        assert headers["connection"] == "close"
        assert _closed_by_server(s)


@pytest.mark.parametrize("endpoint", [{"max_connections": 1}], indirect=True)
def test_a_client_closing_mid_body_frees_its_slot(endpoint: Endpoint) -> None:
    body = _infer_body()
    for _ in range(3):  # one slot: each abandoned connection must give it back
        with _connect(endpoint) as s:
            s.sendall(_infer_head(len(body)) + body[:40])
    end = time.monotonic() + 60
    while True:
        with _connect(endpoint) as s:
            s.sendall(_infer_head(len(body)) + body)
            status, _, doc = _read_response(s, bytearray())
        if status == 200:
            break
        assert status == 503, doc  # the slot is not back yet (its thread still ending)
        assert time.monotonic() < end, "the slot never came back"
        time.sleep(0.1)


def test_an_idle_keep_alive_connection_is_closed(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "IDLE_CONNECTION_S", 0.3)
    with _connect(endpoint) as s:
        s.sendall(LIVE)
        assert _read_response(s, bytearray())[0] == 200
        s.settimeout(30)  # the server's idle limit closes it long before this
        assert s.recv(65536) == b""


@pytest.mark.parametrize("endpoint", [{"rate_per_s": 1.0}], indirect=True)
def test_the_statistics_are_not_refused_by_the_rate_limit(endpoint: Endpoint) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    with _connect(endpoint) as s:
        buf = bytearray()
        statuses = []
        for _ in range(3):
            s.sendall(b"GET /v2 HTTP/1.1\r\n" + auth + b"\r\n")
            statuses.append(_read_response(s, buf)[0])
        assert 429 in statuses  # one token a second: the burst is spent
        for _ in range(3):
            s.sendall(b"GET /v2/models/stats HTTP/1.1\r\n" + auth + b"\r\n")
            status, _, doc = _read_response(s, buf)
            assert status == 200, doc
            assert json.loads(doc)["endpoint"]["rate_limited"] >= 1
