"""Protocol details of an infer request: `outputs` limits what comes back; the
parameters the endpoint reads are typed (a 400 naming the parameter and the type
expected); a tensor cannot carry both `data` and `binary_data_size`; a number too long
to read is refused in the endpoint's words; and a refusal for the request's own
`timeout` carries no retry advice, one for the server's deadline does."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.serving import protocol
from edge_agent.serving.http import Endpoint
from edge_agent.serving.protocol import (
    ModelSpec,
    ProtocolError,
    encode_response,
    infer_body,
    infer_response,
    parse_infer,
)
from tests.serving_inprocess import post, post_with_headers, running_endpoint

SPEC = ModelSpec("m", "m-int8-onnx", "m", 3, "onnxruntime_onnx", "window", 2, 3, 1.0)
TOKEN = "outputs-test-token-0123456789"


def _body(**extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "inputs": [{"name": "window", "shape": [2, 2, 3], "datatype": "FP32", "data": [0] * 12}]
    }
    doc.update(extra)
    return json.dumps(doc).encode()


def _answer(**extra: Any) -> dict[str, Any]:
    """The JSON answer to a request with `extra` for the scores 0.5 and 1.0."""
    req = parse_infer(_body(**extra), SPEC)
    payload, head = infer_body(SPEC, req, np.array([0.5, 1.0]), 1.0)
    doc: dict[str, Any] = json.loads(payload if head is None else payload[:head])
    return doc


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({}, ["anomaly_score"]),
        ({"outputs": []}, ["anomaly_score"]),  # tritonclient sends none for none named
        ({"outputs": [{"name": "alarm"}]}, ["alarm"]),
        ({"outputs": [{"name": "anomaly_score"}]}, ["anomaly_score"]),
        ({"outputs": [{"name": "alarm"}, {"name": "anomaly_score"}]}, ["anomaly_score", "alarm"]),
        ({"parameters": {"alarm": True}}, ["anomaly_score", "alarm"]),
        # the parameter asks for the alarm as well as what outputs names
        ({"parameters": {"alarm": True}, "outputs": [{"name": "anomaly_score"}]},
         ["anomaly_score", "alarm"]),
    ],
)  # fmt: skip
def test_outputs_limits_what_comes_back(extra: dict[str, Any], names: list[str]) -> None:
    assert [o["name"] for o in _answer(**extra)["outputs"]] == names


def test_alarm_alone_in_binary_carries_only_its_bytes() -> None:
    req = parse_infer(
        _body(outputs=[{"name": "alarm"}], parameters={"binary_data_output": True}), SPEC
    )
    assert req.binary_outputs == {"alarm"}
    payload, head = encode_response(infer_response(SPEC, req, np.array([0.5, 1.0]), 1.0), req)
    assert head is not None
    doc = json.loads(payload[:head])
    assert [o["name"] for o in doc["outputs"]] == ["alarm"]
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 2}
    assert payload[head:] == b"\x00\x01"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"parameters": {"binary_data_output": "yes"}},
         'parameters.binary_data_output: expected true or false, got string "yes"'),
        ({"parameters": {"binary_data_output": 1}},
         "parameters.binary_data_output: expected true or false, got number 1"),
        ({"parameters": {"alarm": "yes"}},
         'parameters.alarm: expected true or false, got string "yes"'),
        ({"parameters": {"alarm": None}}, "parameters.alarm: expected true or false, got null"),
        ({"outputs": [{"name": "alarm", "parameters": {"binary_data": "true"}}]},
         'outputs[0].parameters.binary_data: expected true or false, got string "true"'),
        ({"outputs": [{"name": "alarm", "parameters": [1]}]},
         "outputs[0].parameters: expected an object, got an array"),
        # an empty array or false is not an empty object (review 72x)
        ({"outputs": [{"name": "alarm", "parameters": []}]},
         "outputs[0].parameters: expected an object, got an array"),
        ({"parameters": []}, "parameters: expected an object, got an array"),
        ({"parameters": False}, "parameters: expected an object, got"),
        ({"parameters": {"stream": 5}}, "parameters.stream: expected a stream name"),
        ({"parameters": {"timeout": "100"}},
         'parameters.timeout: expected a positive number of microseconds, got string "100"'),
    ],
)  # fmt: skip
def test_a_parameter_of_the_wrong_type_is_named_with_the_type_expected(
    extra: dict[str, Any], words: str
) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_infer(_body(**extra), SPEC)
    assert e.value.status == 400
    assert words in e.value.message


@pytest.mark.parametrize(
    ("every", "own", "binary"),
    [
        (True, {"alarm": False}, {"anomaly_score"}),  # the output's own word overrides
        (True, {"anomaly_score": False, "alarm": False}, set()),
        (False, {"alarm": True}, {"alarm"}),
        (True, {}, {"anomaly_score", "alarm"}),
        (False, {"anomaly_score": True, "alarm": False}, {"anomaly_score"}),
    ],
)
def test_an_outputs_own_binary_data_overrides_binary_data_output(
    every: bool, own: dict[str, bool], binary: set[str]
) -> None:
    outputs = [
        {"name": n, **({"parameters": {"binary_data": own[n]}} if n in own else {})}
        for n in ("anomaly_score", "alarm")
    ]
    req = parse_infer(_body(outputs=outputs, parameters={"binary_data_output": every}), SPEC)
    assert req.binary_outputs == binary
    payload, head = encode_response(infer_response(SPEC, req, np.array([0.5, 1.0]), 1.0), req)
    doc = json.loads(payload if head is None else payload[:head])
    in_json = {o["name"] for o in doc["outputs"] if "data" in o}
    assert in_json == {"anomaly_score", "alarm"} - binary


def test_parameters_it_does_not_know_are_ignored() -> None:
    req = parse_infer(_body(parameters={"priority": 3, "sequence_id": "x"}), SPEC)
    assert not req.want_alarm
    assert req.want_score


def _binary(tensor_extra: dict[str, Any], size: Any = 24) -> tuple[bytes, int]:
    header = json.dumps(
        {"inputs": [{"name": "window", "shape": [1, 2, 3], "datatype": "FP32",
                     "parameters": {"binary_data_size": size}, **tensor_extra}]}
    ).encode()  # fmt: skip
    return header + struct.pack("<6f", 1, 2, 3, 4, 5, 6), len(header)


def test_a_tensor_with_data_and_binary_data_size_is_refused() -> None:
    body, head = _binary({"data": [9, 9, 9, 9, 9, 9]})
    with pytest.raises(ProtocolError) as e:
        parse_infer(body, SPEC, head)
    assert e.value.status == 400
    assert "both data and binary_data_size" in e.value.message
    body, head = _binary({})
    assert parse_infer(body, SPEC, head).windows.ravel().tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("size", ["24", 24.0, True])
def test_binary_data_size_must_be_a_whole_number(size: Any) -> None:
    body, head = _binary({}, size)
    with pytest.raises(ProtocolError, match="binary_data_size: expected a whole number"):
        parse_infer(body, SPEC, head)


@pytest.mark.parametrize("where", ["data", "id"])
@pytest.mark.parametrize("parser", ["orjson", "stdlib"])
def test_a_number_too_long_to_read_is_refused_in_the_endpoints_words(
    where: str, parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if parser == "stdlib":
        monkeypatch.setattr(protocol, "_orjson", None)
    elif protocol._orjson is None:
        pytest.skip("orjson is not installed")
    huge = "9" * 5000
    data = f"[{huge}, 2, 3, 4, 5, 6]" if where == "data" else "[1, 2, 3, 4, 5, 6]"
    rid = f', "id": {huge}' if where == "id" else ""
    body = (
        f'{{"inputs": [{{"name": "window", "shape": [1, 2, 3], "datatype": "FP32", '
        f'"data": {data}}}]{rid}}}'
    ).encode()
    with pytest.raises(ProtocolError) as e:
        parse_infer(body, SPEC)
    assert e.value.status == 400
    assert "sys.set_int_max_str_digits" not in e.value.message
    assert "a number cannot be read: it has more than 4300 digits" in e.value.message


# -- a request's own deadline, against the real endpoint ---------------------------------
@pytest.fixture
def endpoint(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path, TOKEN, **getattr(request, "param", {})) as ep:
        yield ep


def _window(**extra: Any) -> bytes:
    doc = {
        "inputs": [{"name": "window", "datatype": "FP32", "shape": [1, 10, 8], "data": [0.5] * 80}]
    }
    return json.dumps({**doc, **extra}).encode()


def _post(ep: Endpoint, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    return post_with_headers(ep, "/v2/models/skab-zsq/infer", body, TOKEN)


def test_a_timeout_that_cannot_be_met_gets_no_retry_advice(endpoint: Endpoint) -> None:
    assert post(endpoint, "/v2/models/skab-zsq/infer", _window(), TOKEN)[0] == 200  # timed once
    status, doc, headers = _post(endpoint, _window(parameters={"timeout": 1}))
    assert status == 503, doc
    assert "Retry-After" not in headers
    assert "parameters.timeout: 1 us" in doc["error"]
    assert "deadline" in doc["error"]


@pytest.mark.parametrize("endpoint", [{"deadline_ms": 0.001}], indirect=True)
def test_the_servers_own_deadline_still_says_when_to_retry(endpoint: Endpoint) -> None:
    # a request timeout longer than the server's deadline is not the binding one
    for extra in ({}, {"parameters": {"timeout": 10_000_000}}):
        # (one may pass while the scheduler has not yet timed a window)
        answers = [_post(endpoint, _window(**extra)) for _ in range(10)]
        refused = [(doc, headers) for status, doc, headers in answers if status == 503]
        assert refused, [a[:2] for a in answers]
        for doc, headers in refused:
            assert headers.get("Retry-After") == "1", doc


def test_tritonclient_gets_the_one_output_it_names(endpoint: Endpoint) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{endpoint.port}")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    x = np.full((2, 10, 8), 0.5, np.float32)
    inp = httpclient.InferInput("window", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer(
        "skab-zsq", [inp], headers=dict(auth), outputs=[httpclient.InferRequestedOutput("alarm")]
    )
    assert res.as_numpy("anomaly_score") is None
    assert res.as_numpy("alarm").dtype == np.bool_
    assert res.as_numpy("alarm").shape == (2,)
    both = client.infer("skab-zsq", [inp], headers=dict(auth))  # none named: the score
    assert both.as_numpy("anomaly_score").shape == (2,)
    assert both.as_numpy("alarm") is None
    client.close()
