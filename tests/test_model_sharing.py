"""A model instance is used by one thread at a time.

After an OTA promotion every stream of a family serves the same loaded candidate (the
updater swaps one instance into each), and the shadow runner scores with it too. Two
streams scoring concurrently through that handover must each get exactly the scores
the same backend gives them alone, whatever their batch sizes.
"""

from __future__ import annotations

import threading
import time
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
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from edge_agent.streams import StreamRuntime
from tests.agentutil import MODELS
from tests.pooled import pool_with_workers

WINDOWS = 10_000
PROFILE = Profile(name="t")
# (block samples, max batch): a live stream scoring one window per call beside one
# catching up 30 windows a call (two batches), as in the field report.
STREAMS = {"live": (16, 16), "catch-up": (512, 16)}
VARIANTS = [
    pytest.param("vibration-ae-int8-tflite", marks=pytest.mark.tflite),
    "vibration-ae-fp32-onnx",
    "vibration-ae-int8-onnx",
]


def _signal(seed: int) -> npt.NDArray[np.float32]:
    """Normal signal for WINDOWS windows; another seed per stream, so a score handed
    to the wrong stream shows."""
    sig = SyntheticSignal(SignalSpec(seed=seed, anomalies=False))
    return sig.render(seed * 1_000_000, samples_needed(64, 16, WINDOWS))


def _pipeline(name: str, model: LoadedModel, max_batch: int) -> StreamPipeline:
    pre = model.card.preprocessing
    policy = AlarmPolicy(model.card.threshold)
    return StreamPipeline(name, model, policy, window=pre.window, hop=pre.hop, max_batch=max_batch)


def _run(
    pipe: StreamPipeline,
    samples: npt.NDArray[np.float32],
    block: int,
    errors: list[BaseException],
    promoted: threading.Event | None = None,
) -> None:
    """Feed `samples` in blocks, recording every scored batch; halfway, wait for the
    promotion so both streams run on the shared model for the second half."""
    try:
        for start in range(0, len(samples), block):
            if promoted is not None and start >= len(samples) // 2:
                assert promoted.wait(60), "the promotion did not happen"
            pipe.process(Block(samples[start : start + block], start / 100.0, start, 100.0))
    except BaseException as e:  # noqa: BLE001 - re-raised by the test thread
        errors.append(e)


def _recorder(into: list[npt.NDArray[np.float64]]):  # type: ignore[no-untyped-def]
    def hook(w: Windows, s: npt.NDArray[np.float64], m: LoadedModel) -> None:
        into.append(s.copy())

    return hook


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_streams_sharing_a_promoted_model_get_their_own_scores(variant: str) -> None:
    model_dir: Path = MODELS / variant
    signals = {name: _signal(seed) for seed, name in enumerate(STREAMS, start=1)}

    # The reference: each stream alone, single-threaded, on an instance of its own.
    reference = {}
    for name, (block, batch) in STREAMS.items():
        alone = _pipeline(name, load_model(model_dir, PROFILE), batch)
        got: list[npt.NDArray[np.float64]] = []
        alone.shadow = _recorder(got)
        _run(alone, signals[name], block, [])
        reference[name] = np.concatenate(got)
        assert len(reference[name]) == WINDOWS

    # Start-up: one instance per stream. Promotion: one candidate for both (as the
    # updater does), swapped in while both streams are scoring.
    pipes = {
        name: _pipeline(name, load_model(model_dir, PROFILE), batch)
        for name, (_block, batch) in STREAMS.items()
    }
    candidate = load_model(model_dir, PROFILE)
    scores: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in STREAMS}
    errors: list[BaseException] = []
    promoted = threading.Event()
    threads = []
    for name, (block, _batch) in STREAMS.items():
        pipes[name].shadow = _recorder(scores[name])
        args = (pipes[name], signals[name], block, errors, promoted)
        threads.append(threading.Thread(target=_run, args=args, name=f"stream-{name}"))
    for t in threads:
        t.start()
    # Promote while both streams are scoring on their own instances (a quarter in).
    deadline = time.monotonic() + 120
    while min(p.stats.windows for p in pipes.values()) < WINDOWS // 4 and not errors:
        assert time.monotonic() < deadline, "the streams did not get going"
        time.sleep(0.01)
    for p in pipes.values():
        p.swap_model(candidate, AlarmPolicy(candidate.card.threshold))
    promoted.set()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a stream did not finish"
    assert errors == []
    for name in STREAMS:
        assert pipes[name].model is candidate
        shared = np.concatenate(scores[name])
        assert len(shared) == WINDOWS
        # Same backend, same batches: the same bits.
        np.testing.assert_array_equal(shared, reference[name], err_msg=f"stream {name}")
    assert candidate.backend.calls > WINDOWS // 16  # both streams really ran on it


def _reference(
    model_dir: Path, signals: dict[str, npt.NDArray[np.float32]]
) -> dict[str, npt.NDArray[np.float64]]:
    """Each stream alone, single-threaded, on an instance of its own, no scheduler."""
    reference = {}
    for name, (block, batch) in STREAMS.items():
        alone = _pipeline(name, load_model(model_dir, PROFILE), batch)
        got: list[npt.NDArray[np.float64]] = []
        alone.shadow = _recorder(got)
        _run(alone, signals[name], block, [])
        reference[name] = np.concatenate(got)
        assert len(reference[name]) == WINDOWS
    return reference


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_streams_through_the_scheduler_across_a_promotion_get_their_own_scores(
    variant: str, tmp_path: Path
) -> None:
    """As the agent wires it: the pool loads the variant once for both streams, the
    model's InferenceScheduler (its worker running as the supervisor runs it) batches
    their windows together; halfway through a quarter, the updater's promotion swaps one
    candidate into both pipelines while they score. 10,000 windows each, every score
    the single-threaded reference's."""
    model_dir: Path = MODELS / variant
    signals = {name: _signal(seed) for seed, name in enumerate(STREAMS, start=1)}
    reference = _reference(model_dir, signals)

    cfg = parse_config(
        {
            "state_dir": str(tmp_path),
            "streams": [
                {
                    "name": name,
                    "model": str(model_dir),
                    "max_batch": batch,
                    "source": {"kind": "synthetic"},
                }
                for name, (_block, batch) in STREAMS.items()
            ],
        }
    )
    with pool_with_workers(PROFILE) as (pool, scheds):
        rts = {
            sc.name: StreamRuntime(sc, cfg, PROFILE, None, pool=pool, schedulers=scheds)
            for sc in cfg.streams
        }
        active = rts["live"].pipeline.model
        assert rts["catch-up"].pipeline.model is active  # one instance for the family
        sched = scheds.for_model(active)
        assert sched is not None
        assert sched.clients == 2
        candidate = load_model(model_dir, PROFILE)  # the updater loads it from its slot
        scores: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in STREAMS}
        errors: list[BaseException] = []
        promoted = threading.Event()
        threads = []
        for name, (block, _batch) in STREAMS.items():
            pipe = rts[name].pipeline
            pipe.shadow = _recorder(scores[name])
            args = (pipe, signals[name], block, errors, promoted)
            threads.append(threading.Thread(target=_run, args=args, name=f"stream-{name}"))
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        pipes = [rt.pipeline for rt in rts.values()]
        while min(p.stats.windows for p in pipes) < WINDOWS // 4 and not errors:
            assert time.monotonic() < deadline, "the streams did not get going"
            time.sleep(0.01)
        # the updater's promotion: the same candidate into every target, while scoring
        for p in pipes:
            p.swap_model(candidate, AlarmPolicy(candidate.card.threshold))
        promoted.set()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a stream did not finish"
        assert errors == []
    # before the promotion the scheduler's worker scored both streams, batched together
    assert sched.windows >= WINDOWS // 4
    assert sched.batches < sched.windows
    for name in STREAMS:
        assert rts[name].pipeline.model is candidate
        got = np.concatenate(scores[name])
        assert len(got) == WINDOWS
        np.testing.assert_array_equal(got, reference[name], err_msg=f"stream {name}")
    assert candidate.backend.calls > WINDOWS // 16  # both streams really ran on it


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_backend_called_from_two_threads_returns_each_its_own_output(variant: str) -> None:
    """The backend itself, without a pipeline: different batch sizes from two threads
    (LiteRT resizes its input between them) never fail and never swap outputs."""
    model = load_model(MODELS / variant, PROFILE)
    rng = np.random.default_rng(3)
    inputs = {1: rng.normal(size=(1, 64, 4)), 7: rng.normal(size=(7, 64, 4))}
    xs = {b: model.normalize(x.astype(np.float32)) for b, x in inputs.items()}
    want = {b: model.backend.infer(x) for b, x in xs.items()}
    bad: list[str] = []

    def call(b: int) -> None:
        try:
            for _ in range(2000):
                y = model.backend.infer(xs[b])
                if not np.array_equal(y, want[b]):
                    bad.append(f"batch {b}: output differs")
                    return
        except Exception as e:  # noqa: BLE001 - reported by the test thread
            bad.append(f"batch {b}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=call, args=(b,)) for b in xs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert bad == []
