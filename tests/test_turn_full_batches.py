"""A stream's turn that holds a quarter of a backend batch or more (a max-speed turn, a
backlog) is scored in the stream's own thread while the model's scheduler is idle, not
handed to the scheduler's worker and back: batching it with other streams gains little, and the
hand-over between threads (and cores) cost 64 max-speed streams about a sixth of their
windows/s (one stream alone always scored inline). Scores stay exactly the
single-stream reference's, also for a turn beyond the scheduler's limit on one request,
and from two streams at once (one of them then waits for the worker). Real models, a
real pool, a real scheduler with its worker running."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.config import parse_config
from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.pipeline.windows import Windows, samples_needed
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import DEFAULT_MAX_BATCH, SchedulerSet
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from edge_agent.streams import StreamRuntime
from tests.agentutil import MODELS
from tests.pooled import pool_with_workers

PROFILE = Profile(name="t")
WINDOWS = 4_000
# block samples per stream: ~500 windows a block (two backend batches), and ~1,250 (more
# than the scheduler takes as one request: 4 x 256 windows)
STREAMS = {"a": 8_192, "b": 20_000}
VARIANTS = ["vibration-ae-int8-onnx", "vibration-ae-fp32-onnx"]


def _signal(seed: int) -> npt.NDArray[np.float32]:
    sig = SyntheticSignal(SignalSpec(seed=seed, anomalies=False))
    return sig.render(seed * 1_000_000, samples_needed(64, 16, WINDOWS))


def _recorder(into: list[npt.NDArray[np.float64]]):  # type: ignore[no-untyped-def]
    def hook(w: Windows, s: npt.NDArray[np.float64], m: LoadedModel) -> None:
        into.append(s.copy())

    return hook


def _feed(pipe: StreamPipeline, samples: npt.NDArray[np.float32], block: int) -> None:
    for start in range(0, len(samples), block):
        pipe.process(Block(samples[start : start + block], start / 100.0, start, 100.0))


def _reference(model_dir: Path, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The stream alone on an instance of its own, no scheduler: blocks of 1,024
    samples scored 16 windows a call (a block of one window is scored with another
    reduction, a BLAS dot: other bits in the last place)."""
    model = load_model(model_dir, PROFILE)
    pre = model.card.preprocessing
    pipe = StreamPipeline(
        "ref", model, AlarmPolicy(model.card.threshold), window=pre.window, hop=pre.hop
    )
    got: list[npt.NDArray[np.float64]] = []
    pipe.shadow = _recorder(got)
    _feed(pipe, samples, 1_024)
    return np.concatenate(got)


def _runtimes(
    model_dir: Path, names: list[str], state: Path, pool: ModelPool, scheds: SchedulerSet
) -> dict[str, StreamRuntime]:
    """Streams `names` of the model at `model_dir` on one pool and its running schedulers."""
    cfg = parse_config(
        {
            "state_dir": str(state),
            "streams": [
                {"name": name, "model": str(model_dir), "source": {"kind": "synthetic"}}
                for name in names
            ],
        }
    )
    return {
        sc.name: StreamRuntime(sc, cfg, PROFILE, None, pool=pool, schedulers=scheds)
        for sc in cfg.streams
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_batch_turns_keep_the_reference_scores(variant: str, tmp_path: Path) -> None:
    model_dir = MODELS / variant
    signals = {name: _signal(seed) for seed, name in enumerate(STREAMS, start=1)}
    reference = {name: _reference(model_dir, signals[name]) for name in STREAMS}
    with pool_with_workers(PROFILE) as (pool, scheds):
        rts = _runtimes(model_dir, list(STREAMS), tmp_path, pool, scheds)
        sched = scheds.for_model(rts["a"].pipeline.model)
        assert sched is not None
        assert sched.clients == 2
        assert sched.max_batch == DEFAULT_MAX_BATCH
        assert STREAMS["b"] // 16 > sched.max_queue  # a turn beyond one request's limit
        scores: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in STREAMS}
        for name, rt in rts.items():
            rt.pipeline.shadow = _recorder(scores[name])

        # one stream at a time (max-speed turns run one at a time): nothing is queued
        _feed(rts["a"].pipeline, signals["a"], STREAMS["a"])
        assert sched.running
        snap = sched.snapshot()
        assert snap["max_queued_windows"] == 0, "a full batch went to the worker's queue"
        assert snap["windows"] == WINDOWS
        assert snap["inline_windows"] == 0
        assert snap["refused"] == 0

        # both at once: whichever finds the scheduler busy waits for the worker
        scores["a"].clear()
        rts["a"].pipeline = _fresh(rts["a"].pipeline)
        rts["a"].pipeline.shadow = _recorder(scores["a"])
        errors: list[BaseException] = []

        def run(name: str) -> None:
            try:
                _feed(rts[name].pipeline, signals[name], STREAMS[name])
            except BaseException as e:  # noqa: BLE001 - re-raised by the test thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(n,)) for n in STREAMS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
    assert sched.snapshot()["refused"] == 0
    for name in STREAMS:
        got = np.concatenate(scores[name])
        assert len(got) == WINDOWS
        np.testing.assert_array_equal(got, reference[name], err_msg=f"stream {name}")


def _fresh(p: StreamPipeline) -> StreamPipeline:
    """The same stream from its first sample again (same model, scorer)."""
    q = StreamPipeline(p.name, p.model, AlarmPolicy(p.threshold), window=p.window, hop=p.hop)
    q.scorer = p.scorer
    return q


@pytest.mark.parametrize(("block", "queued"), [(1_648, False), (800, True)])
def test_a_quarter_batch_or_more_is_scored_in_the_stream_thread(
    block: int, queued: bool, tmp_path: Path
) -> None:
    """~100 windows a turn (a max-speed stream's last rows before its file loops) are
    scored in the stream's thread too; ~50 (below a quarter of a batch) still go to the
    worker, to be batched with other streams'. Scores stay the reference's either way."""
    model_dir = MODELS / VARIANTS[0]
    signal = _signal(3)
    reference = _reference(model_dir, signal)
    with pool_with_workers(PROFILE) as (pool, scheds):
        rt = _runtimes(model_dir, ["a", "b"], tmp_path, pool, scheds)["a"]
        sched = scheds.for_model(rt.pipeline.model)
        assert sched is not None
        assert sched.clients == 2
        got: list[npt.NDArray[np.float64]] = []
        rt.pipeline.shadow = _recorder(got)
        _feed(rt.pipeline, signal, block)
        snap = sched.snapshot()
    assert (snap["max_queued_windows"] > 0) is queued
    assert snap["windows"] == WINDOWS
    np.testing.assert_array_equal(np.concatenate(got), reference)
