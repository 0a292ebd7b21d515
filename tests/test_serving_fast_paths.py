"""The batch-1 shortcuts of the endpoint give the bytes and verdicts of the general
code: a one-window answer from its template is the document json.dumps would write,
a 200 head made once a second is the head `response` builds, and the cheaper looks
(orjson's big integers, non-finite data) decide as the generic ones do."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edge_agent.serving import protocol, wire
from edge_agent.serving.protocol import (
    InferRequest,
    ModelSpec,
    ProtocolError,
    encode_response,
    infer_body,
    infer_response,
    parse_infer,
)

SPEC = ModelSpec("fam", "fam-fp32-onnx", "fam", 2, "onnxruntime_onnx", "window", 2, 3, 0.75)
WINDOW = np.zeros((1, 2, 3), np.float32)


def _req(**kw: Any) -> InferRequest:
    args: dict[str, Any] = {
        "id": None,
        "windows": WINDOW,
        "want_alarm": False,
        "stream": None,
        "timeout_s": None,
    }
    args.update(kw)
    return InferRequest(**args)


SCORES = [0.0, -0.0, 1e-300, 0.1234567890123, 5e22, 3.0, float("nan"), float("inf")]
THRESHOLDS: list[Any] = [0.75, 1.0, 1, -0.0, 0.0, 1e-7, np.float64(0.5), float("nan")]


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("score", SCORES)
def test_a_one_window_answer_is_the_documents_bytes(score: float, threshold: Any) -> None:
    req = _req()
    scores = np.array([score])
    want = encode_response(infer_response(SPEC, req, scores, threshold), req)
    assert infer_body(SPEC, req, scores, threshold) == want
    assert infer_body(SPEC, req, scores, threshold) == want  # the template's second use


@pytest.mark.parametrize(
    "req",
    [
        _req(id="r-1"),
        _req(want_alarm=True),
        _req(binary_outputs=frozenset({"anomaly_score"})),
        _req(windows=np.zeros((2, 2, 3), np.float32)),
    ],
)
def test_other_answers_are_built_as_before(req: InferRequest) -> None:
    scores = np.array([0.5] * len(req.windows))
    want = encode_response(infer_response(SPEC, req, scores, 0.75), req)
    assert infer_body(SPEC, req, scores, 0.75) == want


def test_templates_are_per_model_and_threshold() -> None:
    other = ModelSpec("fam-fp32-onnx", "fam-fp32-onnx", "fam", 2, "onnxruntime_onnx", "w", 2, 3, 1)
    req, scores = _req(), np.array([0.25])
    for spec in (SPEC, other, SPEC):
        for threshold in (0.75, 0.9, 2.5):
            want = encode_response(infer_response(spec, req, scores, threshold), req)
            assert infer_body(spec, req, scores, threshold) == want


def test_the_template_cache_stays_bounded() -> None:
    req, scores = _req(), np.array([0.25])
    for i in range(200):
        threshold = 1.0 + i / 1000
        want = encode_response(infer_response(SPEC, req, scores, threshold), req)
        assert infer_body(SPEC, req, scores, threshold) == want
    assert len(protocol._templates) <= 64


@pytest.mark.parametrize(
    ("status", "kw"),
    [
        (200, {}),
        (200, {"close": True}),
        (200, {"headers": {"Retry-After": "1"}}),
        (200, {"content_type": "application/octet-stream"}),
        (404, {}),
        (503, {"headers": {"Retry-After": "1"}, "close": True}),
    ],
)
def test_a_response_head_is_the_same_either_way(status: int, kw: dict[str, Any]) -> None:
    body = b'{"x": 1}'
    before = wire._date.now()
    got = wire.response(status, body, **kw)
    after = wire._date.now()  # a second may turn between the two
    head, _, rest = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert rest == body
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    assert lines[1] == "Server: edge-agent"
    assert lines[2] in (f"Date: {before}", f"Date: {after}")
    assert lines[3:5] == [
        f"Content-Type: {kw.get('content_type', 'application/json')}",
        f"Content-Length: {len(body)}",
    ]
    extra = [f"{k}: {v}" for k, v in kw.get("headers", {}).items()]
    assert lines[5:] == extra + (["Connection: close"] if kw.get("close") else [])


def _generic_big_int(v: Any) -> bool:
    """The walk as it was before the type-based one (the reference)."""
    if isinstance(v, float):
        return v.is_integer() and abs(v) >= 2.0**63
    if isinstance(v, dict):
        return any(_generic_big_int(x) for k, x in v.items() if k != "data")
    if isinstance(v, list):
        return any(_generic_big_int(x) for x in v)
    return False


@pytest.mark.parametrize(
    "doc",
    [
        {"inputs": [{"name": "w", "shape": [1, 2, 3], "data": [1e30, 2.0**70]}]},
        {"id": 2.0**64, "inputs": []},
        {"id": 1.5, "parameters": {"timeout": 2.0**63}},
        {"parameters": {"x": [[1, 2], [3.0, {"y": -(2.0**63)}]]}},
        {"parameters": {"x": [[1, 2], [3.0, {"data": 2.0**80}]]}},
        {"outputs": [{"name": "anomaly_score", "parameters": {"binary_data": True}}]},
        {"a": [True, None, "s", 3, 9.5e18]},
        {"a": [9.2e18, -9.3e18]},
        [2.0**100],
        2.0**63,
        "text",
    ],
)
def test_the_big_integer_look_decides_as_the_generic_walk(doc: Any) -> None:
    parsed = protocol._orjson.loads(json.dumps(doc)) if protocol._orjson else doc
    assert protocol._big_int_read_as_float(parsed) == _generic_big_int(parsed)


BIG = ModelSpec("m", "m", "m", 1, "onnxruntime_onnx", "window", 2, 2, 1.0)


def _body(data: list[Any], **params: Any) -> bytes:
    tensor: dict[str, Any] = {"name": "window", "shape": [1, 2, 2], "datatype": "FP32"}
    tensor["data"] = data
    return json.dumps({"inputs": [tensor], **params}).encode()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([1, 2, 3, float("nan")], "NaN"),
        ([1, 2, 3, float("inf")], "NaN or infinity"),
        ([1, 2, 3, 1e39], "float32"),
        ([1, 2, 3, -1e300], "float32"),
    ],
)
def test_non_finite_data_is_still_refused(data: list[float], words: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_infer(_body(data), BIG)
    assert e.value.status == 400
    assert words in e.value.message


def test_huge_finite_values_whose_squares_overflow_are_accepted() -> None:
    # the one-dot look sees infinity for these; the exact look then accepts them
    req = parse_infer(_body([3e38, -3e38, 1e20, 0.5]), BIG)
    assert req.windows.dtype == np.float32
    np.testing.assert_array_equal(
        req.windows.reshape(-1), np.array([3e38, -3e38, 1e20, 0.5], np.float32)
    )


def test_a_bool_in_the_shape_is_still_refused() -> None:
    body = json.dumps(
        {"inputs": [{"name": "window", "shape": [True, 2, 2], "datatype": "FP32", "data": [1] * 4}]}
    ).encode()
    with pytest.raises(ProtocolError) as e:
        parse_infer(body, BIG)
    assert "shape" in e.value.message


def test_request_targets_are_split_as_before_and_kept_bounded() -> None:
    from edge_agent.serving import http

    for target in ["/v2/models/m/infer?x=1", "//v2//health/live/", "/", "/v2?"]:
        path = target.split("?", 1)[0]
        assert http._split_target(target) == (path, [p for p in path.split("/") if p])
    for i in range(300):
        http._split_target(f"/v2/models/m{i}/ready")
    long = "/v2/models/" + "x" * 1000
    assert http._split_target(long)[1] == ["v2", "models", "x" * 1000]
    assert len(http._targets) <= 256
    assert long not in http._targets
