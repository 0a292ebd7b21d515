"""The endpoint's JSON both ways: with orjson (the `serving` extra, in the dev install)
and with the stdlib alone, a request body gets the same answer (the same document, or
the same error message; NaN and Infinity read and then refused as non-finite data, as
the stdlib reads them), and answers are json.dumps' bytes exactly."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from edge_agent.serving import protocol
from edge_agent.serving.limits import Slots
from edge_agent.serving.protocol import ModelSpec, ProtocolError, dumps, loads, parse_infer

SPEC = ModelSpec("m", "m-v", "m", 1, "onnxruntime_onnx", "window", 2, 3, 1.0)


@pytest.fixture(params=["orjson", "stdlib"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "stdlib":
        monkeypatch.setattr(protocol, "_orjson", None)
    return str(request.param)


def test_the_dev_install_has_orjson_so_both_parsers_are_tested() -> None:
    assert protocol._orjson is not None, "install the dev extra (it brings the serving extra)"


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0; NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


ATOMS = [
    b"1", b"-0", b"-0.0", b"0.1", b"1e400", b"-1e400", b"1e-400", b"NaN", b"Infinity",
    b"-Infinity", b"9223372036854775807", b"18446744073709551615", b"18446744073709551616",
    b"-9223372036854775809", b"123456789012345678901234567890", b"1e19", b"01", b"1.", b".5",
    b'"\\ud800"', b'"\xc3\xa9"', b'"\xff"', b"tru", b'"a\tb"', b'{"a":1,"a":2}', b"[1,]",
    b"\xef\xbb\xbf{}", b" \t\n\r1 ", b"1 2", b"", b"4.9e-324", b"1.7976931348623159e308",
]  # fmt: skip


def _outcome(f: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", f(body)
    except (ValueError, UnicodeDecodeError) as e:
        return type(e).__name__, str(e)


@pytest.mark.parametrize("atom", ATOMS)
def test_a_body_parses_as_the_stdlib_parses_it(parser: str, atom: bytes) -> None:
    for body in (atom, b"[" + atom + b"]", b'{"id": ' + atom + b', "inputs": []}'):
        want, got = _outcome(json.loads, body), _outcome(loads, body)
        assert want[0] == got[0], (body, want, got)
        if want[0] == "ok":
            assert _same(want[1], got[1]), (body, want, got)
        else:
            assert want[1] == got[1], (body, want, got)


def _infer(data: str, *, rid: str = '"r"', shape: str = "[1, 2, 3]") -> bytes:
    return (
        f'{{"id": {rid}, "inputs": [{{"name": "window", "datatype": "FP32", '
        f'"shape": {shape}, "data": [{data}]}}]}}'
    ).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_infer("1, 2, NaN, 4, 5, 6"), "data holds NaN or infinity"),
        (_infer("1, 2, Infinity, 4, 5, 6"), "data holds NaN or infinity"),
        (_infer("1, 2, -Infinity, 4, 5, 6"), "data holds NaN or infinity"),
        (_infer("1, 2, 1e400, 4, 5, 6"), "data holds NaN or infinity"),
        (_infer("1, 2, 1e39, 4, 5, 6"), "a value is beyond float32's range"),
        (_infer("1, 2, 1" + "0" * 40 + ", 4, 5, 6"), "a value is beyond float32's range"),
        (_infer('1, 2, "x", 4, 5, 6'), "data must be numbers"),
        (_infer("1, 2, null, 4, 5, 6"), "data holds NaN or infinity"),
        (_infer("1, 2, 3, 4, 5, 6", shape="[18446744073709551616, 2, 3]"), "values, shape"),
        (_infer("1, 2, 3, 4, 5, 6", shape="[1e19, 2, 3]"), "does not match"),
        (_infer("1, 2, 3, 4, 5,"), "request body is not JSON: Expecting value"),
        (b'{"inputs": [], "x": NaN', "request body is not JSON"),
        # valid JSON Python cannot take: 400, never a 500 with a traceback (review of #18)
        (_infer("1, 2, 1" + "0" * 400 + ", 4, 5, 6"), "a value is beyond float32's range"),
        (_infer("1, 2, 3, 4, 5, 6", rid="1" * 5000), "a number cannot be read"),
        (
            b'{"parameters": {"timeout": 1' + b"0" * 400 + b"}, " + _infer("1, 2, 3, 4, 5, 6")[1:],
            "parameters.timeout: expected a positive number",
        ),
        (_infer("[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (_infer("[" * 900 + "1" + "]" * 900), "1 values, shape [1, 2, 3] needs 6"),
    ],
)
def test_a_bad_request_gets_the_same_refusal_either_way(body: bytes, message: str) -> None:
    answers = []
    for orjson in (protocol._orjson, None):
        saved, protocol._orjson = protocol._orjson, orjson
        try:
            with pytest.raises(ProtocolError) as e:
                parse_infer(body, SPEC)
        finally:
            protocol._orjson = saved
        assert e.value.status == 400
        assert message in e.value.message, e.value.message
        answers.append(e.value.message)
    assert answers[0] == answers[1]


def test_a_good_request_reads_the_same_either_way(parser: str) -> None:
    big = "123456789012345678901234567890"  # an id beyond 64 bits stays an integer
    req = parse_infer(_infer("0.1, -2, 3.5e2, 1e-40, 0, 7", rid=big), SPEC)
    assert req.id == big
    assert req.windows.dtype == np.float32
    assert req.windows.flags.writeable
    want = np.array([0.1, -2, 350, 1e-40, 0, 7], dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(req.windows.reshape(-1), want)


@pytest.mark.parametrize(
    "doc",
    [
        {"error": "model 'x\u00e9\"\\n' is not served here"},
        {"outputs": [{"name": "anomaly_score", "data": [0.1, -0.0, 1e300, float("nan")]}]},
        {"a": [1, True, None, {"b": [float("inf"), -float("inf")]}], "c": {}},
    ],
)
def test_answers_are_json_dumps_bytes(doc: dict[str, Any]) -> None:
    assert dumps(doc) == json.dumps(doc).encode()


def test_slots_refuse_past_their_count_and_are_given_back() -> None:
    s = Slots(2)
    assert s.take()
    assert s.take()
    assert not s.take()
    s.give()
    assert s.take()
    s.give()
    s.give()
    with pytest.raises(ValueError, match="without a take"):
        s.give()
