"""Review of issue 18 (third pass): FP32/FP64 tensor data given as JSON strings or
booleans is not the datatype the request names, and must be refused with 400 in the
protocol's error form (docs/serving.md: 400 for a wrong datatype; the code's own
"data must be numbers" refusal). Today strings numpy can convert ("0.5", " 1 ",
"1e3") and booleans are silently scored as numbers and answered 200, while "x" or
"0x10" get "data must be numbers": a client that serialised its tensor as text is
scored on whatever numpy makes of it, instead of being told.

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
N = WINDOW * COLUMNS


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    tmp: Path = tmp_path_factory.mktemp("review18c-strings")
    with running_endpoint(tmp, TOKEN) as ep:
        yield ep


def _infer(ep: Endpoint, data: list[Any], datatype: str = "FP32") -> tuple[int, dict[str, Any]]:
    tensor = {"name": CARD.input.name, "datatype": datatype, "shape": [1, WINDOW, COLUMNS]}
    body = json.dumps({"inputs": [{**tensor, "data": data}]}).encode()
    return post(ep, f"/v2/models/{MODEL}/infer", body, TOKEN)


def test_numbers_are_scored(endpoint: Endpoint) -> None:
    status, doc = _infer(endpoint, [0.5] * N)
    assert status == 200, doc


DATA: dict[str, list[Any]] = {
    "decimal strings": ["0.5"] * N,
    "one decimal string among numbers": ["0.5"] + [0.5] * (N - 1),
    "strings with spaces": [" 1 "] * N,
    "exponent strings": ["1e3"] * N,
    "booleans": [True] * N,
}


@pytest.mark.parametrize("what", sorted(DATA))
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_data_that_is_not_numbers_is_400(endpoint: Endpoint, what: str, datatype: str) -> None:
    status, doc = _infer(endpoint, DATA[what], datatype)
    assert status == 400, (what, datatype, status, doc)
    assert list(doc) == ["error"], doc
