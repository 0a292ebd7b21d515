"""The endpoint's pure parts: request parsing, responses, the rate limit, bind rules."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError, ServingError
from edge_agent.serving.http import read_token
from edge_agent.serving.limits import TokenBucket
from edge_agent.serving.protocol import (
    ModelSpec,
    ProtocolError,
    encode_response,
    infer_response,
    parse_infer,
)

SPEC = ModelSpec("m", "m-int8-onnx", "m", 3, "onnxruntime_onnx", "window", 2, 3, 1.0)


def _body(data: object, shape: object = (1, 2, 3), dtype: str = "FP32", **extra: object) -> bytes:
    doc = {"inputs": [{"name": "window", "shape": list(shape), "datatype": dtype, "data": data}]}
    doc.update(extra)
    return json.dumps(doc).encode()


def test_flat_and_nested_data_give_the_same_windows() -> None:
    flat = parse_infer(_body([1, 2, 3, 4, 5, 6]), SPEC)
    nested = parse_infer(_body([[[1, 2, 3], [4, 5, 6]]]), SPEC)
    assert flat.windows.dtype == np.float32
    assert flat.windows.shape == (1, 2, 3)
    np.testing.assert_array_equal(flat.windows, nested.windows)
    assert not flat.want_alarm
    assert flat.binary_outputs == frozenset()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[1, 2", "not JSON"),
        (b"[]", "JSON object"),
        (_body([1] * 6, shape=(1, 3, 2)), "[n, 2, 3]"),
        (_body([1] * 6, shape=(0, 2, 3)), "shape"),
        (_body([1] * 6, dtype="INT64"), "INT64"),
        (_body([1] * 5), "5 values"),
        (_body(["a"] * 6), "numbers"),
        (_body([1, 2, 3, 4, 5, float("nan")]), "NaN"),
        (_body([1, 2, 3, 4, 5, 1e300]), "float32"),
        (_body([1] * 6, parameters={"alarm": "yes"}), "alarm"),
        (_body([1] * 6, parameters={"timeout": -5}), "timeout"),
        (_body([1] * 6, outputs=[{"name": "latent"}]), "latent"),
    ],
)
def test_bad_requests_are_400_saying_what_is_wrong(body: bytes, words: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_infer(body, SPEC)
    assert e.value.status == 400
    assert words in e.value.message


def test_wrong_input_name_is_named() -> None:
    doc = {"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [0] * 6}]}
    with pytest.raises(ProtocolError, match="'x' is not this model's input 'window'"):
        parse_infer(json.dumps(doc).encode(), SPEC)


def test_alarm_output_and_threshold() -> None:
    req = parse_infer(_body([0] * 12, shape=(2, 2, 3), parameters={"alarm": True}, id=7), SPEC)
    out = infer_response(SPEC, req, np.array([0.5, 1.0]), 1.0)
    assert out["id"] == "7"
    assert out["parameters"] == {"variant": "m-int8-onnx", "threshold": 1.0}
    assert out["outputs"][1] == {
        "name": "alarm",
        "datatype": "BOOL",
        "shape": [2],
        "data": [False, True],
    }
    asked = parse_infer(_body([0] * 6, outputs=[{"name": "alarm"}]), SPEC)
    assert asked.want_alarm


def test_binary_tensors_both_ways() -> None:
    header = json.dumps(
        {
            "inputs": [
                {"name": "window", "shape": [1, 2, 3], "datatype": "FP32",
                 "parameters": {"binary_data_size": 24}}
            ],
            "outputs": [{"name": "anomaly_score", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    raw = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    req = parse_infer(header + raw, SPEC, len(header))
    np.testing.assert_array_equal(req.windows.ravel(), [1, 2, 3, 4, 5, 6])
    assert req.binary_outputs == {"anomaly_score"}
    payload, head = encode_response(infer_response(SPEC, req, np.array([0.25]), 1.0), req)
    assert head is not None
    doc = json.loads(payload[:head])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert struct.unpack("<d", payload[head:]) == (0.25,)
    with pytest.raises(ProtocolError, match="binary_data_size"):
        parse_infer(header + raw[:-4], SPEC, len(header))


def test_token_bucket_refuses_past_the_burst_and_refills() -> None:
    b = TokenBucket(rate=10.0, burst=2.0)
    assert b.take(0.0) == 0.0
    assert b.take(0.0) == 0.0
    wait = b.take(0.0)
    assert wait == pytest.approx(0.1)
    assert b.take(0.1) == 0.0  # one token came back in 0.1 s


def test_bind_rules_are_config_errors_naming_the_file() -> None:
    def cfg(**serving: object) -> None:
        parse_config({"serving": {"enabled": True, **serving}}, source="agent.toml")

    with pytest.raises(ConfigError, match=r"agent.toml: serving: host = '0.0.0.0'.*allow_remote"):
        cfg(host="0.0.0.0", token_file="t")
    with pytest.raises(ConfigError, match=r"agent\.toml: serving: on TCP it needs token_file"):
        cfg()
    cfg(host="0.0.0.0", allow_remote=True, token_file="t")
    cfg(socket="/run/x.sock")  # the socket's file mode guards it
    parse_config({"serving": {"host": "0.0.0.0"}})  # off: nothing to refuse


def test_token_file_must_hold_a_real_token(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "token"
    p.write_text("short\n")
    with pytest.raises(ServingError, match="16 characters"):
        read_token(str(p))
    with pytest.raises(ServingError, match="token_file"):
        read_token(str(p) + ".missing")
    p.write_text("  a-long-enough-token-123  \n")
    assert read_token(str(p)) == "a-long-enough-token-123"
    assert read_token("") is None
