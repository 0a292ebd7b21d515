"""What a refused or one-off load leaves in the model pool and in the agent's records.

- A load that could not fit even with every idle model gone is refused without evicting
  any of them (a model too big beside a stream's must not empty the pool at each
  request for it, making every other model load again at its next request).
- A load that fits once idle models go still evicts them, least recently used first.
- The serving endpoint holds a model as a new pool user per request; its loads are
  recorded for the OTA boot loader (status.json `ota.model_source`) under one name,
  "serving", not one per request, and a refusal names "serving".

Real bundled models, real pool and schedulers; charges are the files' sizes
(`file_meter`), so the budgets below are exact."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ConfigError
from edge_agent.profiles import Profile
from edge_agent.runtime.pool import ModelPool, file_meter
from edge_agent.runtime.scheduler import InferenceScheduler, SchedulerSet
from edge_agent.serving.models import POOL_OWNER, Catalogue, Scorer
from edge_agent.serving.protocol import ProtocolError
from edge_agent.updates.boot import SlotBoot
from tests.agentutil import MODELS
from tests.serving_inprocess import StopLoop

PROFILE = Profile(name="pool-refusals")
BIG = MODELS / "vibration-ae-fp32-onnx"  # the largest of the three
MID = MODELS / "inspection-ae-int8-onnx"
SMALL = MODELS / "vibration-ae-int8-onnx"


def _mb(d: Path) -> float:
    return sum(p.stat().st_size for p in d.glob("*.onnx")) / 2**20


def test_a_load_refused_anyway_evicts_no_idle_model() -> None:
    budget = _mb(BIG) + _mb(SMALL) * 1.2  # BIG with SMALL fits, BIG with MID does not
    assert _mb(BIG) + _mb(MID) > budget
    pool = ModelPool(PROFILE, budget_mb=budget, meter=file_meter)
    pool.acquire(BIG, "stream-a")  # held: pinned
    pool.acquire(SMALL, "request-1")
    pool.release("request-1")  # idle
    for _ in range(3):
        with pytest.raises(ConfigError, match="inspection-ae-int8-onnx needs") as err:
            pool.acquire(MID, "request-2")
    # the models in use, and only those, are named and counted (SMALL could go)
    assert "'stream-a'" in str(err.value)
    assert SMALL.name not in str(err.value)
    assert f"{_mb(BIG):.1f} of profile" in str(err.value)
    assert pool.evictions == 0
    assert {e.key.name for e in pool.entries()} == {BIG.name, SMALL.name}


def test_a_load_that_fits_once_idle_models_go_evicts_the_least_recent() -> None:
    budget = _mb(BIG) + _mb(MID) + _mb(SMALL) / 2  # BIG and MID fit, not with SMALL
    pool = ModelPool(PROFILE, budget_mb=budget, meter=file_meter)
    pool.acquire(SMALL, "r1")
    pool.release("r1")
    pool.acquire(BIG, "r2")
    pool.release("r2")
    pool.acquire(MID, "r3")  # needs one to go: SMALL, used least recently
    assert pool.evictions == 1
    assert {e.key.name for e in pool.entries()} == {BIG.name, MID.name}


@pytest.fixture
def scorer(tmp_path: Path) -> Iterator[tuple[Scorer, SlotBoot]]:
    boot = SlotBoot.open(tmp_path)  # OTA on, no slot installed: the bundled models serve
    pool = ModelPool(PROFILE, budget_mb=_mb(BIG) * 1.1, loader=boot.load, meter=file_meter)
    scheds = SchedulerSet(PROFILE)
    loop = StopLoop()

    def worker(_name: str, s: InferenceScheduler) -> None:
        threading.Thread(target=s.run, args=(loop,), daemon=True).start()

    scheds.on_new = worker
    pool.on_load = lambda e: scheds.add(e.model)
    pool.on_evict = lambda e: scheds.remove(e.model)
    try:
        yield Scorer(Catalogue(MODELS, PROFILE), pool, scheds), boot
    finally:
        loop.stop.set()


def test_endpoint_loads_are_recorded_once_as_serving(scorer: tuple[Scorer, SlotBoot]) -> None:
    s, boot = scorer
    big, small = s.catalogue.spec(BIG.name), s.catalogue.spec(SMALL.name)
    for i in range(20):  # the budget holds one: every request evicts the other
        spec = big if i % 2 else small
        windows = np.zeros((1, spec.window, spec.columns), np.float32)
        scores, _threshold = s.score(spec, windows, budget_s=30.0)
        assert scores.shape == (1,)
    assert s.pool.evictions >= 18
    assert boot.sources == {POOL_OWNER: "bundled"}


def test_an_endpoint_refusal_names_the_endpoint(scorer: tuple[Scorer, SlotBoot]) -> None:
    s, _boot = scorer
    s.pool.acquire(BIG, "stream-a")  # a stream's: pinned, and the budget is full
    spec = s.catalogue.spec(MID.name)
    with pytest.raises(ProtocolError) as err:
        s.score(spec, np.zeros((1, spec.window, spec.columns), np.float32), budget_s=30.0)
    assert err.value.status == 503
    assert str(err.value).startswith(f"{POOL_OWNER!r}: model {MID.name} needs")
    assert "serving#" not in str(err.value)
