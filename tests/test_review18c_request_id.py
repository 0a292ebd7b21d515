"""Review of issue 18 (third pass): the infer request's `id` is a string in the Open
Inference Protocol (`"id": $string`), echoed in the response. A non-string id is
today turned into Python's repr of it and echoed as that string: `true` comes back as
"True", `{"a": 1}` as "{'a': 1}", `[1, 2]` as "[1, 2]"; Triton refuses such a request
(400, "Unable to parse 'id'"). Either answer is acceptable here (400 in the protocol's
error form, or the id echoed as the very JSON value sent), but never Python's repr.

Real in-process Endpoint (catalogue, model pool, scheduler worker) on a real socket,
a bundled model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.runtime.model import find_models
from edge_agent.serving.http import Endpoint
from tests.agentutil import MODELS
from tests.serving_inprocess import post, running_endpoint

TOKEN = "review18c-token-0123456789"
MODEL = "skab-zsq-int8-onnx"
CARD = next(c for c in find_models(MODELS) if c.name == MODEL)
WINDOW, COLUMNS = CARD.preprocessing.window, CARD.preprocessing.columns


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    tmp: Path = tmp_path_factory.mktemp("review18c-id")
    with running_endpoint(tmp, TOKEN) as ep:
        yield ep


def _infer(ep: Endpoint, rid: Any) -> tuple[int, dict[str, Any]]:
    tensor = {"name": CARD.input.name, "datatype": "FP32", "shape": [1, WINDOW, COLUMNS]}
    doc = {"id": rid, "inputs": [{**tensor, "data": [0.5] * (WINDOW * COLUMNS)}]}
    return post(ep, f"/v2/models/{MODEL}/infer", json.dumps(doc).encode(), TOKEN)


def test_a_string_id_is_echoed(endpoint: Endpoint) -> None:
    status, doc = _infer(endpoint, "req-7")
    assert status == 200, doc
    assert doc["id"] == "req-7"


@pytest.mark.parametrize("rid", [True, False, {"a": 1}, [1, 2]], ids=repr)
def test_a_non_string_id_is_refused_or_echoed_as_sent(endpoint: Endpoint, rid: Any) -> None:
    status, doc = _infer(endpoint, rid)
    if status == 400:
        assert list(doc) == ["error"], doc
        return
    assert status == 200, doc
    assert doc.get("id") == rid, f"id {rid!r} sent, {doc.get('id')!r} echoed"
