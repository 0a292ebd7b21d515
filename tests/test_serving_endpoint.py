"""The Open Inference Protocol endpoint against a real `edge-agent run` process:
health, metadata, infer on every bundled variant and family (scores equal to the
model run directly), errors in the protocol's form; plain urllib and tritonclient."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.profiles import load_profiles, select
from edge_agent.runtime.card import ModelCard
from edge_agent.runtime.model import find_models, load_model, resolve_model_dir
from tests.agentutil import MODELS
from tests.serving_agent import TOKEN, Served, serving_agent

CARDS = {c.name: c for c in find_models(MODELS)}
FAMILIES = sorted({c.family for c in CARDS.values()})
MAX_BODY_KB = 256


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    extra = f"max_body_kb = {MAX_BODY_KB}\ndeadline_ms = 10000"  # conformance, not timing
    with serving_agent(tmp_path_factory.mktemp("serving"), extra) as a:
        yield a


def _family_choice(family: str) -> ModelCard:
    profile = select("auto", load_profiles()).profile
    return CARDS[resolve_model_dir(family, "auto", profile, MODELS).name]


def _infer_body(card: ModelCard, x: np.ndarray, **params: Any) -> dict[str, Any]:
    return {
        "id": "req-1",
        "inputs": [
            {
                "name": card.input.name,
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ],
        "parameters": params,
    }


def _assert_error(status: int, doc: dict[str, Any], want: int, *words: str) -> None:
    assert status == want, doc
    assert list(doc) == ["error"], doc
    assert isinstance(doc["error"], str)
    for w in words:
        assert w in doc["error"], doc


def test_health_and_server_metadata(agent: Served) -> None:
    assert agent.request("/v2/health/live", token=None)[:2] == (200, {"live": True})
    assert agent.request("/v2/health/ready", token=None)[:2] == (200, {"ready": True})
    status, doc, _ = agent.request("/v2")
    assert status == 200
    assert doc["name"] == "edge-agent"
    assert doc["version"]
    assert doc["extensions"] == ["binary_tensor_data"]  # supported both ways: say so
    status, doc, _ = agent.request("/v2/models")
    assert status == 200
    assert doc["models"] == sorted([*CARDS, *FAMILIES])


@pytest.mark.parametrize("name", sorted([*CARDS, *FAMILIES]))
def test_model_metadata_and_ready(agent: Served, name: str) -> None:
    card = CARDS.get(name) or _family_choice(name)
    pre = card.preprocessing
    status, doc, _ = agent.request(f"/v2/models/{name}")
    assert status == 200
    assert doc["name"] == name
    assert doc["versions"] == [str(card.version)]
    assert doc["inputs"] == [
        {"name": card.input.name, "datatype": "FP32", "shape": [-1, pre.window, pre.columns]}
    ]
    assert [o["name"] for o in doc["outputs"]] == ["anomaly_score", "alarm"]
    assert agent.request(f"/v2/models/{name}/versions/{card.version}")[1] == doc
    assert agent.request(f"/v2/models/{name}/ready")[:2] == (200, {"name": name, "ready": True})
    status, err, _ = agent.request(f"/v2/models/{name}/versions/99")
    _assert_error(status, err, 404, "version")


@pytest.mark.parametrize("name", sorted([*CARDS, *FAMILIES]))
def test_infer_scores_equal_the_model_run_directly(agent: Served, name: str) -> None:
    card = CARDS.get(name) or _family_choice(name)
    x = card.golden.inputs[:8]
    status, doc, _ = agent.request(f"/v2/models/{name}/infer", _infer_body(card, x, alarm=True))
    assert status == 200, doc
    assert doc["model_name"] == name
    assert doc["model_version"] == str(card.version)
    assert doc["id"] == "req-1"
    assert doc["parameters"]["variant"] == card.name
    score, alarm = doc["outputs"]
    assert score["name"] == "anomaly_score"
    assert score["datatype"] == "FP64"
    assert score["shape"] == [len(x)]
    want = load_model(card.directory).scores(x)
    np.testing.assert_allclose(score["data"], want, rtol=1e-6, atol=1e-9)
    assert doc["parameters"]["threshold"] == card.threshold
    assert alarm == {
        "name": "alarm",
        "datatype": "BOOL",
        "shape": [len(x)],
        "data": [bool(s >= card.threshold) for s in score["data"]],
    }


def test_alarm_only_when_asked_and_against_the_streams_threshold(agent: Served) -> None:
    card = _family_choice("vibration-ae")  # the demo stream's model
    x = card.golden.inputs[:4]
    doc = agent.request("/v2/models/vibration-ae/infer", _infer_body(card, x))[1]
    assert [o["name"] for o in doc["outputs"]] == ["anomaly_score"]
    body = _infer_body(card, x, stream="demo")
    body["outputs"] = [{"name": "anomaly_score"}, {"name": "alarm"}]
    status, doc, _ = agent.request("/v2/models/vibration-ae/infer", body)
    assert status == 200, doc
    threshold = agent.status()["streams"][0]["threshold"]
    assert doc["parameters"]["threshold"] == pytest.approx(threshold)
    scores = doc["outputs"][0]["data"]
    assert doc["outputs"][1]["data"] == [s >= doc["parameters"]["threshold"] for s in scores]
    status, err, _ = agent.request(
        "/v2/models/vibration-ae/infer", _infer_body(card, x, stream="nope")
    )
    _assert_error(status, err, 400, "nope")
    skab = CARDS["skab-ae-int8-onnx"]
    status, err, _ = agent.request(
        "/v2/models/skab-ae-int8-onnx/infer",
        _infer_body(skab, skab.golden.inputs[:1], stream="demo"),
    )
    _assert_error(status, err, 400, "demo", "vibration-ae")


def test_errors_in_the_protocols_form(agent: Served) -> None:
    card = CARDS["vibration-ae-int8-onnx"]
    x = card.golden.inputs[:2]
    path = "/v2/models/vibration-ae-int8-onnx/infer"
    _assert_error(*agent.request("/v2/models/no-such-model")[:2], 404, "no-such-model")
    _assert_error(
        *agent.request("/v2/models/no-such-model/infer", _infer_body(card, x))[:2], 404, "no-such"
    )
    _assert_error(*agent.request("/v2/models/../../etc")[:2], 404)
    body = _infer_body(card, x)
    body["inputs"][0]["shape"] = [2, 32, 8]
    _assert_error(*agent.request(path, body)[:2], 400, "shape", "[n, 64, 4]")
    body = _infer_body(card, x)
    body["inputs"][0]["datatype"] = "INT32"
    _assert_error(*agent.request(path, body)[:2], 400, "datatype", "INT32")
    body = _infer_body(card, x)
    body["inputs"][0]["name"] = "pixels"
    _assert_error(*agent.request(path, body)[:2], 400, "pixels")
    body = _infer_body(card, x)
    body["inputs"][0]["data"] = body["inputs"][0]["data"][:-1]
    _assert_error(*agent.request(path, body)[:2], 400, "values")
    _assert_error(*agent.request(path, raw=b"{not json")[:2], 400, "JSON")
    big = _infer_body(card, card.golden.inputs[:1].repeat(200, axis=0))
    status, doc, _ = agent.request(path, big)
    _assert_error(status, doc, 413, "max_body_kb")
    _assert_error(*agent.request(path, body, token="wrong-token")[:2], 401, "token")
    status, doc, headers = agent.request("/v2", token=None)
    _assert_error(status, doc, 401, "Bearer")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    _assert_error(*agent.request("/v2/models/vibration-ae/infer")[:2], 405, "POST")
    # the connection-level refusals did not break the endpoint
    assert agent.request(path, _infer_body(card, x))[0] == 200


def test_one_keep_alive_connection_survives_refused_requests_with_bodies(
    agent: Served,
) -> None:
    card = CARDS["skab-zsq-int8-onnx"]
    good = json.dumps(_infer_body(card, card.golden.inputs[:2])).encode()
    path = "/v2/models/skab-zsq-int8-onnx/infer"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    conn = agent.connection()
    try:
        for headers, want in [
            (auth, 200),
            ({**auth, "Authorization": "Bearer wrong"}, 401),  # refused before its body
            (auth, 200),
            (auth, 200),
        ]:
            conn.request("POST", path, good, headers)
            r = conn.getresponse()
            doc = json.loads(r.read())
            assert r.status == want, doc
    finally:
        conn.close()


def test_tritonclient_works_against_it(agent: Served) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    auth = {"Authorization": f"Bearer {TOKEN}"}
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{agent.port}")
    try:
        assert client.is_server_live(headers=auth)
        assert client.is_server_ready(headers=auth)
        assert client.get_server_metadata(headers=auth)["name"] == "edge-agent"
        for name in ["vibration-ae", "skab-pca-int8-tflite"]:
            card = CARDS.get(name) or _family_choice(name)
            assert client.is_model_ready(name, headers=auth)
            meta = client.get_model_metadata(name, headers=auth)
            assert meta["inputs"][0]["name"] == card.input.name
            x = card.golden.inputs[:5].astype(np.float32)
            for binary in (False, True):
                inp = httpclient.InferInput(card.input.name, list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                outs = [
                    httpclient.InferRequestedOutput("anomaly_score", binary_data=binary),
                    httpclient.InferRequestedOutput("alarm", binary_data=binary),
                ]
                # a copy: the client adds its own headers to the dict it is given
                res = client.infer(name, [inp], outputs=outs, headers=dict(auth))
                scores = res.as_numpy("anomaly_score")
                np.testing.assert_allclose(
                    scores, load_model(card.directory).scores(x), rtol=1e-6, atol=1e-9
                )
                assert list(res.as_numpy("alarm")) == [bool(s >= card.threshold) for s in scores]
        # the client's defaults (binary tensors both ways, outputs not named)
        card = _family_choice("skab-ae")
        x = card.golden.inputs[:3].astype(np.float32)
        inp = httpclient.InferInput(card.input.name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("skab-ae", [inp], headers=dict(auth))
        np.testing.assert_allclose(
            res.as_numpy("anomaly_score"), load_model(card.directory).scores(x), rtol=1e-6
        )
        # the statistics route tritonclient reads (counts of the variant the family serves)
        st = client.get_inference_statistics("skab-ae", headers=auth)["model_stats"]
        assert [(s["name"], s["version"]) for s in st] == [("skab-ae", str(card.version))]
        assert st[0]["inference_count"] >= 3
        assert st[0]["execution_count"] >= 1
        with pytest.raises(InferenceServerException, match="no-such-model"):
            client.get_inference_statistics("no-such-model", headers=auth)
        with pytest.raises(InferenceServerException, match="no-such-model"):
            client.get_model_metadata("no-such-model", headers=auth)
        with pytest.raises(InferenceServerException, match="token"):
            client.get_server_metadata(headers={"Authorization": "Bearer wrong"})
        bad = httpclient.InferInput("window", [1, 3, 4], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 4), np.float32), binary_data=False)
        with pytest.raises(InferenceServerException, match="shape"):
            client.infer("vibration-ae", [bad], headers=auth)
    finally:
        client.close()


def test_unix_socket_with_file_mode(tmp_path: Path) -> None:
    sock = tmp_path / "infer.sock"
    extra = f'socket = "{sock}"\nsocket_mode = 0o600\ndeadline_ms = 10000'
    with serving_agent(tmp_path, extra, demo=False, socket_path=sock) as agent:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        card = CARDS["skab-zsq-int8-onnx"]
        x = card.golden.inputs[:3]
        status, doc, _ = agent.request("/v2/models/skab-zsq-int8-onnx/infer", _infer_body(card, x))
        assert status == 200, doc
        np.testing.assert_allclose(
            doc["outputs"][0]["data"], load_model(card.directory).scores(x), rtol=1e-6
        )
        # the token file is still honoured on a socket when configured
        _assert_error(*agent.request("/v2", token="wrong")[:2], 401)
    assert not sock.exists()  # removed at stop


def test_connections_over_the_limit_get_503_at_once(tmp_path: Path) -> None:
    with serving_agent(tmp_path, "max_connections = 1", demo=False) as agent:
        # a held keep-alive connection takes the one slot (once the connections of
        # the start-up polling are gone) and keeps it with a request in hand, its body
        # not yet sent (an idle one would give its slot to a new connection: see
        # test_serving_slots.py)
        end = time.monotonic() + 60
        while True:
            held = agent.connection()
            held.request("GET", "/v2", headers={"Authorization": f"Bearer {TOKEN}"})
            r = held.getresponse()
            if r.status == 200:
                r.read()
                break
            held.close()
            assert time.monotonic() < end, "the slot never became free"
            time.sleep(0.1)
        held.putrequest("POST", "/v2/models/vibration-ae/infer")
        held.putheader("Authorization", f"Bearer {TOKEN}")
        held.putheader("Content-Length", "100")
        held.endheaders()
        for _ in range(3):
            status, doc, headers = agent.request("/v2/health/live")
            _assert_error(status, doc, 503, "too many connections")
            assert headers["Retry-After"] == "1"
        held.close()
        while agent.request("/v2/health/live")[0] != 200:  # the slot comes back
            assert time.monotonic() < end
            time.sleep(0.1)
        # counted with the other refusals for load (the flood test adds them up); the
        # health request's connection may hold the one slot a moment after its answer
        while (stats := agent.request("/v2/models/stats"))[0] != 200:
            assert time.monotonic() < end, stats
            time.sleep(0.1)
        assert stats[1]["endpoint"]["busy"] >= 3


def test_off_by_default_and_not_imported() -> None:
    code = (
        "import sys; from edge_agent.config import parse_config; import edge_agent.agent; "
        "assert parse_config({}).serving.enabled is False; "
        "assert not [m for m in sys.modules if m.startswith('edge_agent.serving')]"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
