"""Review of issue 18: infer bodies that are valid JSON but hold numbers or nesting
Python cannot take (an integer past float's range, an id over the int-to-str digit
limit, arrays nested past the recursion limit) are malformed requests: 400 in the
protocol's error form, as docs/serving.md's error table says. They were answered 500
"internal error" with a traceback in the agent's log.

Real in-process Endpoint (catalogue, model pool, scheduler worker) on a real socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.runtime.model import find_models
from edge_agent.serving.http import Endpoint
from tests.agentutil import MODELS
from tests.serving_inprocess import post, running_endpoint

TOKEN = "review18-token-0123456789"
MODEL = "vibration-ae-int8-onnx"
CARD = next(c for c in find_models(MODELS) if c.name == MODEL)


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path, TOKEN) as ep:
        yield ep


def _window_json(first: bytes = b"0.1") -> bytes:
    """The input tensor of one window as JSON, its first value `first` (raw bytes)."""
    n = CARD.preprocessing.window * CARD.preprocessing.columns
    shape = [1, CARD.preprocessing.window, CARD.preprocessing.columns]
    head = f'{{"name": "{CARD.input.name}", "datatype": "FP32", "shape": {shape}, "data": ['
    return head.encode() + first + b", 0.1" * (n - 1) + b"]}"


BIG_INT = str(10**400).encode()  # valid JSON; beyond float64's range

BODIES = {
    "integer past float range in data": b'{"inputs": [' + _window_json(BIG_INT) + b"]}",
    "integer past float range in parameters.timeout": (
        b'{"parameters": {"timeout": ' + BIG_INT + b'}, "inputs": [' + _window_json() + b"]}"
    ),
    "id of 5000 digits": b'{"id": ' + b"1" * 5000 + b', "inputs": [' + _window_json() + b"]}",
    "data nested 100000 deep": (
        b'{"inputs": [{"name": "window", "datatype": "FP32", "shape": [1, 64, 4], "data": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}]}"
    ),
}


@pytest.mark.parametrize("what", sorted(BODIES))
def test_unreadable_numbers_and_nesting_are_400_not_500(endpoint: Endpoint, what: str) -> None:
    body = BODIES[what]
    assert len(body) < endpoint.cfg.max_body_kb * 1024  # not a size refusal
    status, doc = post(endpoint, f"/v2/models/{MODEL}/infer", body, TOKEN)
    assert list(doc) == ["error"], doc
    assert status == 400, (what, status, doc)
    assert "internal error" not in doc["error"]
