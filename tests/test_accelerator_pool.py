"""The model pool under an accelerator budget, with real onnxruntime sessions of the
bundled models.

There is no GPU here: a test profile lists the CPU provider as its accelerator, so
binding, unbinding and the LRU order run for real (the sessions are real, on CPU); a
profile naming TensorRT and CUDA, absent from this onnxruntime build, shows the fallback.
On a Jetson, `python -m edge_agent.runtime.accel_check` runs the same on the GPU
(docs/install.md).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.profiles import Profile
from edge_agent.runtime.binding import CPU
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.runtime.onnx_backend import UNBOUND
from edge_agent.runtime.pool import ModelPool, PoolEntry, file_meter
from tests.agentutil import MODELS

A = MODELS / "vibration-ae-fp32-onnx"  # 138 kB
B = MODELS / "inspection-ae-int8-onnx"  # 78 kB
C = MODELS / "vibration-ae-int8-onnx"  # 42 kB
CPU_AS_ACCELERATOR = Profile(name="cpu-as-accelerator", onnx_providers=(CPU,))
JETSON_LIKE = Profile(
    name="jetson-like",
    onnx_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU),
)
PLAIN = Profile(name="plain")
HOST_MB = 64.0


def _mb(d: Path) -> float:
    return (d / "model.onnx").stat().st_size / 2**20


# Room for any two of A, B, C, never all three.
TWO_OF_THREE_MB = _mb(A) + _mb(B) + _mb(C) / 2


def _windows(model: LoadedModel, n: int = 32, seed: int = 0) -> npt.NDArray[np.float32]:
    shape = (n, *(int(s) for s in model.card.input.shape[1:] if s is not None))
    return np.random.default_rng(seed).normal(0.0, 1.5, shape).astype(np.float32)


def _plain_scores(d: Path, seed: int = 0) -> npt.NDArray[np.float64]:
    m = load_model(d, PLAIN)
    assert m.backend.providers == [CPU]
    return m.scores_normalized(_windows(m, seed=seed))


def _scores(m: LoadedModel, seed: int = 0) -> npt.NDArray[np.float64]:
    return m.scores_normalized(_windows(m, seed=seed))


def _pool(profile: Profile, accelerator_mb: float) -> ModelPool:
    return ModelPool(profile, budget_mb=HOST_MB, accelerator_mb=accelerator_mb, meter=file_meter)


def _entry(pool: ModelPool, d: Path) -> PoolEntry:
    (e,) = [e for e in pool.entries() if e.key == d.resolve()]
    return e


def _request(pool: ModelPool, d: Path, user: str) -> npt.NDArray[np.float64]:
    """What one serving request does: hold the model while scoring, then let it go."""
    m = pool.acquire(d, user)
    try:
        return _scores(m)
    finally:
        pool.release(user)


def test_a_budget_for_two_unbinds_the_least_recently_used_idle_model_for_the_third() -> None:
    pool = _pool(CPU_AS_ACCELERATOR, TWO_OF_THREE_MB)
    want = {d: _plain_scores(d) for d in (A, B, C)}
    for d in (A, B, C):
        assert np.array_equal(_request(pool, d, f"req {d.name}"), want[d])
        assert pool.accelerator_used_mb <= TWO_OF_THREE_MB
    a, b, c = (_entry(pool, d) for d in (A, B, C))
    assert (a.bound, b.bound, c.bound) == (False, True, True), "A was the least recently used"
    assert a.model.backend.providers == [], "unbound: its session is dropped"
    assert len(a.model.backend.model_bytes) == (A / "model.onnx").stat().st_size
    assert pool.unbinds == 1
    assert len(pool.entries()) == 3, "unbinding is not evicting: all three stay loaded"

    # A used again: bound again (B is now the least recently used), same scores.
    assert np.array_equal(_request(pool, A, "req A again"), want[A])
    assert (a.bound, b.bound, c.bound) == (True, False, True)
    assert (a.bind_count, b.bind_count, c.bind_count) == (2, 1, 1)
    assert a.last_bind_ms is not None
    assert a.last_bind_ms > 0
    assert pool.accelerator_used_mb <= TWO_OF_THREE_MB

    stats = {m["model"]: m for m in pool.snapshot()["models"]}
    assert stats[A.name]["bound"] is True
    assert stats[A.name]["providers"] == [CPU]
    assert stats[A.name]["bind_count"] == 2
    assert stats[B.name]["bound"] is False
    assert stats[B.name]["providers"] == []
    assert pool.snapshot()["unbinds"] == 2
    assert pool.snapshot()["accelerator_budget_mb"] == TWO_OF_THREE_MB


def test_a_running_streams_model_is_never_unbound() -> None:
    pool = _pool(CPU_AS_ACCELERATOR, TWO_OF_THREE_MB)
    streamed = pool.acquire(A, "line1")  # A is the LRU binding from here on
    want = _plain_scores(A)
    stop = threading.Event()
    got: list[bool] = []
    errors: list[BaseException] = []

    def stream() -> None:  # scores A block after block, as a stream does
        try:
            while not stop.is_set():
                got.append(bool(np.array_equal(_scores(streamed), want)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=stream)
    t.start()
    try:
        for i in range(6):  # the endpoint asks for B and C in turn: they swap
            for d in (B, C):
                _request(pool, d, f"req {i} {d.name}")
                assert _entry(pool, A).bound, "the stream's model was unbound"
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors, errors
    assert got, "the stream scored nothing"
    assert all(got), "the stream's scores changed while others were swapped"
    a = _entry(pool, A)
    assert a.bind_count == 1
    assert a.model.backend.providers == [CPU]
    assert _entry(pool, B).bind_count >= 6
    assert _entry(pool, C).bind_count >= 6
    assert pool.unbinds >= 11


def test_no_room_beside_the_streams_models_runs_on_cpu_with_the_reason_then_binds() -> None:
    pool = _pool(CPU_AS_ACCELERATOR, TWO_OF_THREE_MB)
    pool.acquire(A, "line1")
    pool.acquire(B, "line2")
    m = pool.acquire(C, "req")
    c = _entry(pool, C)
    assert not c.bound
    assert c.model.backend.providers == [CPU], "it runs, on CPU"
    assert "accelerator memory: needs" in c.fallback
    assert A.name in c.fallback, "the reason names what holds it"
    assert B.name in c.fallback
    assert np.array_equal(_scores(m), _plain_scores(C))
    assert pool.snapshot()["models"][2]["fallback"] == c.fallback
    assert _entry(pool, A).bound
    assert _entry(pool, B).bound
    pool.release("req")

    pool.release("line2")  # the stream on B stopped: C binds at its next use
    _request(pool, C, "req 2")
    assert c.bound
    assert c.fallback == ""
    assert c.bind_count == 1
    assert not _entry(pool, B).bound


def test_tensorrt_and_cuda_missing_fall_back_to_cpu_with_the_reason_and_same_scores() -> None:
    pool = _pool(JETSON_LIKE, TWO_OF_THREE_MB)
    m = pool.acquire(A, "req")
    a = _entry(pool, A)
    assert not a.bound
    assert a.bind_failed
    assert a.model.backend.providers == [CPU]
    assert a.fallback == (
        "not available in this onnxruntime build: TensorrtExecutionProvider, CUDAExecutionProvider"
    )
    assert np.array_equal(_scores(m), _plain_scores(A))
    assert pool.accelerator_used_mb == 0.0, "a model on CPU holds no accelerator memory"
    session = a.model.backend.session  # type: ignore[attr-defined]
    pool.release("req")
    pool.acquire(A, "req 2")  # not retried at every use: the build will not change
    assert a.model.backend.session is session  # type: ignore[attr-defined]
    stats = pool.snapshot()["models"][0]
    assert stats["bound"] is False
    assert stats["bind_count"] == 0
    assert stats["fallback"].startswith("not available in this onnxruntime build")


def test_a_rebind_uses_the_bytes_held_and_never_reads_the_file_again(tmp_path: Path) -> None:
    d = tmp_path / A.name
    shutil.copytree(A, d)
    pool = _pool(CPU_AS_ACCELERATOR, _mb(A) * 1.5)  # room for A or B, not both
    want = _plain_scores(A)
    assert np.array_equal(_request(pool, d, "req 1"), want)
    _request(pool, B, "req 2")
    assert not _entry(pool, d).bound
    (d / "model.onnx").unlink()  # gone: a re-bind that read the file would fail
    assert np.array_equal(_request(pool, d, "req 3"), want)
    e = _entry(pool, d)
    assert e.bound
    assert e.bind_count == 2
    assert e.fallback == ""


def test_a_model_held_outside_the_pool_still_scores_while_unbound() -> None:
    pool = _pool(CPU_AS_ACCELERATOR, _mb(A) * 1.5)
    held = pool.acquire(A, "ota trial")
    pool.release("ota trial")  # the pool no longer counts it, but a reference remains
    _request(pool, B, "req")
    assert not _entry(pool, A).bound
    assert np.array_equal(_scores(held), _plain_scores(A)), "CPU from the bytes held"
    assert held.backend.fallback == UNBOUND


def test_an_evicted_bound_model_gives_its_accelerator_memory_back() -> None:
    pool = ModelPool(
        CPU_AS_ACCELERATOR,
        budget_mb=_mb(A) * 1.5,  # host: room for one of A and B
        accelerator_mb=TWO_OF_THREE_MB,
        meter=file_meter,
    )
    _request(pool, A, "req 1")
    _request(pool, B, "req 2")
    assert [e.key for e in pool.entries()] == [B.resolve()]
    assert pool.accelerator_used_mb == _entry(pool, B).accelerator_mb > 0


def test_without_an_accelerator_budget_models_are_bound_at_load_and_stay() -> None:
    pool = _pool(CPU_AS_ACCELERATOR, 0.0)
    for d in (A, B, C, A):
        _request(pool, d, "req")
    assert pool.unbinds == 0
    for d in (A, B, C):
        e = _entry(pool, d)
        assert e.bound
        assert e.bind_count == 1
        assert e.model.backend.providers == [CPU]
