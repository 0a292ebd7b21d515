"""The inference scheduler: windows from several streams, one batched backend call.

Each stream gets exactly its own scores (the same as scoring alone), real-time work is
served before best-effort work, and best-effort work that cannot be served in time is
refused at once rather than queued without bound. Through the real agent, streams of
one model share one loaded model and one supervised scheduler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.errors import DeadlineError, OverloadError
from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.pipeline.windows import Windows, samples_needed
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import InferenceScheduler, Priority
from edge_agent.service.faults import Faults
from edge_agent.service.supervisor import Loop
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from tests.agentutil import MODELS, read_status, run_cli

PROFILE = Profile(name="sched-test")
MODEL = MODELS / "vibration-ae-fp32-onnx"
WINDOWS = 2_000
STREAMS = {"a": (1, 16), "b": (2, 16), "c": (3, 512)}  # name: (seed, block samples)


def _signal(seed: int) -> npt.NDArray[np.float32]:
    sig = SyntheticSignal(SignalSpec(seed=seed, anomalies=True))
    return sig.render(seed * 1_000_000, samples_needed(64, 16, WINDOWS))


def _pipeline(model: LoadedModel) -> tuple[StreamPipeline, list[float]]:
    pre = model.card.preprocessing
    pipe = StreamPipeline(
        "s", model, AlarmPolicy(model.card.threshold), window=pre.window, hop=pre.hop
    )
    got: list[float] = []

    def hook(_w: Windows, s: npt.NDArray[np.float64], _m: LoadedModel) -> None:
        got.extend(s.tolist())

    pipe.shadow = hook
    return pipe, got


def _feed(pipe: StreamPipeline, x: npt.NDArray[np.float32], block: int) -> None:
    for i in range(0, len(x), block):
        pipe.process(Block(x[i : i + block], i / 100.0, i, 100.0))


@pytest.fixture
def worker() -> Iterator[tuple[InferenceScheduler, threading.Event]]:
    """A scheduler of a pool-loaded model with its worker running (as the supervisor
    runs it), stopped after the test."""
    model = ModelPool(PROFILE).acquire(MODEL, "test")
    # a generous batch delay: each batch waits for every attached stream's request
    sched = InferenceScheduler(model, max_delay_s=0.05)
    stop = threading.Event()
    t = threading.Thread(target=sched.run, args=(Loop("scheduler", stop, Faults({}, {})),))
    t.start()
    yield sched, stop
    stop.set()
    t.join(10)
    assert not t.is_alive()


def test_streams_batched_together_get_exactly_their_scores_alone(
    worker: tuple[InferenceScheduler, threading.Event],
) -> None:
    sched, _stop = worker
    signals = {n: _signal(seed) for n, (seed, _b) in STREAMS.items()}
    reference = {}
    for n, (_seed, block) in STREAMS.items():
        pipe, got = _pipeline(load_model(MODEL, PROFILE))  # alone, its own instance
        _feed(pipe, signals[n], block)
        reference[n] = got

    shared = sched.model
    results: dict[str, list[float]] = {}
    errors: list[BaseException] = []

    def stream(name: str) -> None:
        try:
            pipe, got = _pipeline(shared)
            pipe.scorer = lambda m, x: sched.score(m, x, priority=Priority.REALTIME)
            _feed(pipe, signals[name], STREAMS[name][1])
            results[name] = got
        except BaseException as e:  # noqa: BLE001 - re-raised by the test thread
            errors.append(e)

    for _ in STREAMS:
        sched.attach()
    threads = [threading.Thread(target=stream, args=(n,)) for n in STREAMS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for _ in STREAMS:
        sched.detach()
    assert not errors, errors
    for n in STREAMS:
        assert len(results[n]) == WINDOWS
        assert results[n] == reference[n], f"stream {n}: scores differ from scoring alone"
    snap = sched.snapshot()
    assert snap["windows"] == WINDOWS * len(STREAMS)
    assert snap["inline_windows"] == 0, "the worker ran, nothing was scored inline"
    # three streams' requests went out in fewer backend calls than requests
    requests = sum(WINDOWS // (b // 16) if b > 16 else WINDOWS for _s, b in STREAMS.values())
    assert snap["batches"] < requests, snap


def test_alone_or_without_a_worker_a_requester_scores_in_its_own_thread(
    worker: tuple[InferenceScheduler, threading.Event],
) -> None:
    sched, _stop = worker
    model = sched.model
    x = model.normalize(_signal(2)[: 64 * 3].reshape(3, 64, -1))
    sched.attach()  # the only client: nothing to batch with
    assert np.array_equal(sched.score(model, x), model.scores_normalized(x))
    assert sched.snapshot()["inline_windows"] == 3
    sched.attach()  # a second one: through the worker
    assert np.array_equal(sched.score(model, x), model.scores_normalized(x))
    assert sched.snapshot()["inline_windows"] == 3
    assert sched.snapshot()["windows"] == 3


def test_without_a_worker_a_requester_scores_in_its_own_thread() -> None:
    model = ModelPool(PROFILE).acquire(MODEL, "test")
    sched = InferenceScheduler(model)
    x = model.normalize(_signal(1)[: 64 * 4].reshape(4, 64, -1))
    got = sched.score(model, x)
    assert np.array_equal(got, model.scores_normalized(x))
    assert sched.snapshot()["inline_windows"] == 4


def test_real_time_requests_go_before_best_effort_ones() -> None:
    model = ModelPool(PROFILE).acquire(MODEL, "test")
    sched = InferenceScheduler(model, max_batch=1, max_delay_s=0.0)
    x = np.zeros((1, 64, 4), np.float32)
    late = sched.submit(model, x, priority=Priority.BEST_EFFORT)
    first = sched.submit(model, x, priority=Priority.REALTIME)
    assert sched.next_batch(0.0) == [first]
    assert sched.next_batch(0.0) == [late]
    assert sched.next_batch(0.0) == []


def test_real_time_waits_in_the_queue_are_counted_against_the_budget() -> None:
    model = ModelPool(PROFILE).acquire(MODEL, "test")
    sched = InferenceScheduler(model, max_batch=1, max_delay_s=0.0, latency_budget_s=0.02)
    x = np.zeros((1, 64, 4), np.float32)
    sched.submit(model, x, priority=Priority.REALTIME)
    time.sleep(0.05)  # a wait over the budget, whatever the machine's load
    sched.submit(model, x, priority=Priority.BEST_EFFORT)  # not counted: not a stream's
    assert len(sched.next_batch(0.0)) == 1
    assert len(sched.next_batch(0.0)) == 1
    sn = sched.snapshot()
    assert (sn["realtime_queued"], sn["realtime_late"]) == (1, 1)
    assert sn["realtime_max_wait_ms"] >= 50.0
    assert sn["latency_budget_ms"] == 20.0


def test_best_effort_work_beyond_the_queue_or_deadline_is_refused_at_once() -> None:
    model = ModelPool(PROFILE).acquire(MODEL, "test")
    sched = InferenceScheduler(model, max_batch=8, max_queue=8, max_delay_s=0.0)
    x = np.zeros((8, 64, 4), np.float32)
    sched.submit(model, x, priority=Priority.BEST_EFFORT)  # fills the queue
    with pytest.raises(OverloadError, match="8 windows queued"):
        sched.submit(model, x[:1], priority=Priority.BEST_EFFORT)
    # a live stream's window is never refused (at most one in flight per stream)
    sched.submit(model, x[:1], priority=Priority.REALTIME)
    assert sched.snapshot()["refused"] == 1

    # a deadline already behind us: refused at once
    fresh = InferenceScheduler(model, max_delay_s=0.0)
    with pytest.raises(OverloadError, match="deadline"):
        fresh.submit(model, x[:1], priority=Priority.BEST_EFFORT, deadline=time.monotonic() - 1)
    # one that passes while queued: refused there, not run late
    r = fresh.submit(model, x[:1], priority=Priority.BEST_EFFORT, deadline=time.monotonic() + 0.01)
    time.sleep(0.05)
    assert fresh.next_batch(0.0) == []
    assert r.done.is_set()
    assert isinstance(r.error, OverloadError)
    assert fresh.snapshot()["expired"] == 1


def test_a_deadline_refusal_is_told_from_a_full_queue() -> None:
    model = ModelPool(PROFILE).acquire(MODEL, "test")
    sched = InferenceScheduler(model, max_batch=8, max_queue=8, max_delay_s=0.0)
    x = np.zeros((8, 64, 4), np.float32)
    sched.submit(model, x, priority=Priority.BEST_EFFORT)
    with pytest.raises(OverloadError) as full:
        sched.submit(model, x[:1], priority=Priority.BEST_EFFORT)
    assert not isinstance(full.value, DeadlineError)
    with pytest.raises(DeadlineError):
        InferenceScheduler(model).submit(
            model, x[:1], priority=Priority.BEST_EFFORT, deadline=time.monotonic() - 1
        )
    fresh = InferenceScheduler(model, max_delay_s=0.0)
    r = fresh.submit(model, x[:1], priority=Priority.BEST_EFFORT, deadline=time.monotonic() + 0.01)
    time.sleep(0.05)  # passes while queued
    assert fresh.next_batch(0.0) == []
    assert isinstance(r.error, DeadlineError)


def test_another_models_windows_are_refused() -> None:
    pool = ModelPool(PROFILE)
    model = pool.acquire(MODEL, "test")
    other = pool.acquire(MODELS / "vibration-ae-int8-onnx", "test")
    with pytest.raises(Exception, match="not the model of scheduler"):
        InferenceScheduler(model).submit(other, np.zeros((1, 64, 4), np.float32))


def test_agent_streams_of_one_model_share_it_and_its_supervised_scheduler(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    lines = ['device_id = "gw-sched"', f'state_dir = "{state}"', "[mqtt]", "port = 1"]
    for i in range(3):
        lines += [
            "[[streams]]",
            f'name = "s{i}"',
            'model = "vibration-ae"',
            'variant = "fp32-onnx"',
            f'source = {{ kind = "synthetic", seed = {i + 1}, block = 16, speed = 0, '
            "anomalies = false }",
        ]
    cfg.write_text("\n".join(lines) + "\n")
    r = run_cli("run", "--config", str(cfg), "--max-windows", "3000", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    st = read_status(state)
    assert sum(s["windows"] for s in st["streams"]) >= 3000
    names = [c["name"] for c in st["supervisor"]["components"]]
    scheds = [n for n in names if n.startswith("scheduler-")]
    assert scheds == ["scheduler-vibration-ae-fp32-onnx-1"], names


def test_a_stream_that_went_quiet_is_not_waited_for_batch_after_batch() -> None:
    model = ModelPool(PROFILE).acquire(MODEL, "test")
    sched = InferenceScheduler(model, max_delay_s=0.2)
    stop = threading.Event()
    t = threading.Thread(target=sched.run, args=(Loop("scheduler", stop, Faults({}, {})),))
    t.start()
    try:
        for _ in range(3):
            sched.attach()  # three streams attached; two of them never send anything
        x = model.normalize(_signal(1)[:64].reshape(1, 64, -1))
        t0 = time.monotonic()
        for _ in range(200):
            sched.score(model, x)
        took = time.monotonic() - t0
    finally:
        stop.set()
        t.join(10)
    # waiting 0.2 s for the silent two at every batch would take 40 s
    assert took < 20, f"{took:.1f} s for 200 requests: the batch waits for quiet streams"
    assert sched.snapshot()["batches"] == 200
