"""The model pool: one loaded instance per model variant, accounted against the budget.

Streams of one variant share the pool's instance and get exactly the scores each
would get alone; a budget that holds two models refuses a third while both are in use
(saying which models and how many MB), and makes room by evicting an idle one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.errors import ConfigError
from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.pipeline.windows import Windows, samples_needed
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.runtime.pool import ModelPool, file_meter
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from tests.agentutil import MODELS

PROFILE = Profile(name="pool-test")
WINDOWS = 3_000
A = MODELS / "vibration-ae-fp32-onnx"  # 138 kB
B = MODELS / "inspection-ae-int8-onnx"  # 78 kB
C = MODELS / "vibration-ae-int8-onnx"  # 42 kB


def _mb(d: Path) -> float:
    return sum(p.stat().st_size for p in d.glob("*.onnx")) / 2**20


def _signal(seed: int) -> npt.NDArray[np.float32]:
    sig = SyntheticSignal(SignalSpec(seed=seed, anomalies=True))
    return sig.render(seed * 1_000_000, samples_needed(64, 16, WINDOWS))


def _scores(model: LoadedModel, samples: npt.NDArray[np.float32], block: int) -> list[float]:
    pre = model.card.preprocessing
    pipe = StreamPipeline(
        "s", model, AlarmPolicy(model.card.threshold), window=pre.window, hop=pre.hop
    )
    got: list[float] = []

    def hook(_w: Windows, s: npt.NDArray[np.float64], _m: LoadedModel) -> None:
        got.extend(s.tolist())

    pipe.shadow = hook
    for i in range(0, len(samples), block):
        pipe.process(Block(samples[i : i + block], i / 100.0, i, 100.0))
    return got


def test_streams_of_one_variant_share_one_instance_and_get_their_own_scores() -> None:
    pool = ModelPool(PROFILE)
    m1 = pool.acquire(A, "stream one")
    m2 = pool.acquire(A, "stream two")
    assert m1 is m2, "two streams of one variant must share the loaded instance"
    assert len(pool.entries()) == 1
    entry = pool.entries()[0]
    assert entry.users == {"stream one", "stream two"}
    assert entry.charge_mb >= _mb(A), "a model is charged at least its file"
    assert pool.used_mb == pytest.approx(entry.charge_mb)

    signals = {"one": (_signal(1), 16), "two": (_signal(2), 512)}
    reference = {n: _scores(load_model(A, PROFILE), x, b) for n, (x, b) in signals.items()}
    got: dict[str, list[float]] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            x, b = signals[name]
            got[name] = _scores(m1, x, b)
        except BaseException as e:  # noqa: BLE001 - re-raised by the test thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in signals]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for name in signals:
        assert len(got[name]) == WINDOWS
        assert got[name] == reference[name], f"stream {name}: scores differ from alone"


def test_a_budget_for_two_models_refuses_the_third_while_both_are_in_use() -> None:
    budget = _mb(A) + _mb(B) + _mb(C) / 2
    pool = ModelPool(PROFILE, budget_mb=budget, meter=file_meter)
    pool.acquire(A, "a")
    pool.acquire(B, "b")
    with pytest.raises(ConfigError) as e:
        pool.acquire(C, "c")
    msg = str(e.value)
    # who asked, for what, the budget, the sum; and what holds the budget, for whom
    for part in ("'c'", C.name, "model_memory_mb", "MB would be needed", "vibration-ae"):
        assert part in msg, msg
    for part in ("inspection-ae", "'a'", "'b'"):
        assert part in msg, msg
    assert len(pool.entries()) == 2, "a refused model must not stay loaded"
    assert pool.used_mb <= budget

    # A stream stops: its model is idle and gives way, least recently used first.
    pool.release("a")
    model_c = pool.acquire(C, "c")
    assert model_c.card.directory.resolve() == C.resolve()
    held = {e.key for e in pool.entries()}
    assert held == {B.resolve(), C.resolve()}, held
    assert pool.evictions == 1
    assert pool.used_mb <= budget


def test_a_pinned_model_is_never_evicted_by_a_smaller_budget() -> None:
    pool = ModelPool(PROFILE, budget_mb=10.0, meter=file_meter)
    pool.acquire(A, "a")
    pool.acquire(C, "c")
    pool.release("c")
    pool.set_budget(_mb(A))  # room for A only
    assert [e.key for e in pool.entries()] == [A.resolve()]
    pool.set_budget(0.01)
    assert [e.key for e in pool.entries()] == [A.resolve()], "a running stream's model stays"


def test_a_model_that_does_not_load_is_not_charged(tmp_path: Path) -> None:
    pool = ModelPool(PROFILE, budget_mb=10.0, meter=file_meter)
    with pytest.raises(Exception, match="model"):
        pool.acquire(tmp_path, "x")
    assert pool.entries() == []
    assert pool.used_mb == 0.0


def test_a_model_loaded_again_keeps_the_charge_measured_at_its_first_load() -> None:
    # A resident-set meter in a running process sees other threads' allocations and
    # reused memory: the same model measures differently each time it loads.
    measured = iter([5.0, 1.0, 0.2, 9.0])

    def noisy(load: Callable[[], LoadedModel]) -> tuple[LoadedModel, float]:
        return load(), next(measured)

    pool = ModelPool(PROFILE, budget_mb=6.5, meter=noisy)
    pool.acquire(A, "a")  # 5.0
    pool.release("a")
    pool.acquire(B, "b")  # 1.0: both fit
    pool.release("b")
    pool.set_budget(1.5)  # A (least recently used) goes
    assert [e.key for e in pool.entries()] == [B.resolve()]
    pool.set_budget(6.5)
    pool.acquire(A, "a")  # measures 0.2 this time; still charged 5.0
    charges = {e.key: e.charge_mb for e in pool.entries()}
    assert charges == {A.resolve(): 5.0, B.resolve(): 1.0}
    assert pool.used_mb == 6.0
    pool.release("a")
    pool.set_budget(0.5)  # both go
    assert pool.entries() == []
    assert pool.evictions == 3
    pool.set_budget(5.5)
    pool.acquire(A, "a")  # measures 9.0 this time: still 5.0, so it fits
    assert {e.key: e.charge_mb for e in pool.entries()} == {A.resolve(): 5.0}
