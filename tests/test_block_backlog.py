"""A backlog costs its per-block work once, not once per block, and scores the same.

When blocks queue up (a consumer behind a live source), the stream takes them as one
block where nothing lies between them, every sample keeping its time; a source at max
speed (a file replayed, the demo generator) is read in the stream's own thread, its
errors still recovered by the source's thread as before; a
block's windows go to the model's scheduler in one hand-over, whose backend calls stay
at most max_batch windows; events, scores and the shadow's parts are what small blocks
give.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.errors import SourceError
from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.stream import AnomalyEvent, StreamPipeline
from edge_agent.pipeline.windows import Windows
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.runtime.scheduler import InferenceScheduler
from edge_agent.service.faults import Faults
from edge_agent.service.supervisor import Loop
from edge_agent.sources.base import Block, Source
from edge_agent.sources.runner import MERGE_MAX_BYTES, PULL_MAX_READS, SourceRunner, SourceState
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from tests.agentutil import MODELS

MODEL = MODELS / "vibration-ae-fp32-onnx"
PROFILE = Profile(name="backlog-test")


@dataclass(frozen=True)
class _ListOptions:
    channels: tuple[str, ...] = ("x",)
    rate_hz: float = 100.0
    speed: float = 1.0  # live (its own thread queues); 0: read in the consumer's thread
    blocks: tuple[Block, ...] = field(default=())


class _ListSource(Source):
    """Hands out a fixed list of blocks, then finishes; `fail` maps a read number to
    what that read raises instead."""

    kind = "list"

    def __init__(
        self, blocks: list[Block], speed: float = 1.0, fail: dict[int, Exception] | None = None
    ) -> None:
        super().__init__("list", _ListOptions(speed=speed, blocks=tuple(blocks)))
        self._left = list(blocks)
        self._fail = dict(fail or {})
        self.reads = 0
        self.opens = 0
        self.readers: set[str] = set()

    def open(self) -> None:
        self.opens += 1

    def read(self, timeout: float) -> Block | None:
        self.reads += 1
        self.readers.add(threading.current_thread().name)
        if self.reads in self._fail:
            raise self._fail[self.reads]
        if not self._left:
            self.finished = True
            return None
        return self._left.pop(0)


def _queued_backlog(
    blocks: list[Block], merge_below: int, max_samples: int | None = None
) -> list[Block]:
    """What one get() hands over once a live source has queued every block."""
    runner = SourceRunner(_ListSource(blocks), max_blocks=len(blocks) + 1, merge_below=merge_below)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while runner.state is not SourceState.FINISHED:
            assert time.monotonic() < deadline, "the source did not finish"
            time.sleep(0.01)
        return runner.get(0.25, 1, max_samples)
    finally:
        runner.stop()


def _sample_times(blocks: list[Block]) -> list[float]:
    return [b.time_of(i) for b in blocks for i in range(len(b.samples))]


def test_a_backlog_is_handed_over_as_one_block_but_never_across_a_hole() -> None:
    x = np.arange(400, dtype=np.float32).reshape(-1, 1)
    blocks = [
        Block(x[0:100], 10.0, 0, 100.0),
        Block(x[100:200], 11.0, 100, 100.0),  # on the rate's grid
        Block(x[200:300], 12.0042, 200, 100.0),  # a live source's receive time: off it
        Block(x[300:350], 50.0, 300, 100.0, gap_before=True),  # after a reconnect
        Block(x[350:400], 50.5, 351, 100.0),  # sample 350 lost
    ]
    got = _queued_backlog(blocks, merge_below=16)
    assert [(b.seq, len(b.samples), b.gap_before) for b in got] == [
        (0, 300, False),
        (300, 50, True),
        (351, 50, False),
    ]
    assert np.array_equal(np.concatenate([b.samples for b in got]), x)
    assert _sample_times(got) == _sample_times(blocks)
    # a stream that merges nothing (a camera's latest-frame queue) gets each block
    assert len(_queued_backlog(blocks[:3], merge_below=0)) == 3


def test_a_merged_backlog_stays_within_its_byte_bound() -> None:
    n = MERGE_MAX_BYTES // 4 // 8  # one-channel float32 blocks: 8 of them fill the bound
    blocks = [Block(np.full((n, 1), i, np.float32), i * n / 100.0, i * n, 100.0) for i in range(20)]
    got = _queued_backlog(blocks, merge_below=16)
    assert [len(b.samples) for b in got] == [8 * n, 8 * n, 4 * n]
    assert all(b.times is None for b in got), "blocks on the rate's grid need no times"
    assert _sample_times(got) == pytest.approx(_sample_times(blocks), abs=1e-9)
    # a run bounded by a number of windows asks for no more samples than those need
    got = _queued_backlog(blocks, merge_below=16, max_samples=3 * n - 1)
    assert [len(b.samples) for b in got] == [2 * n] * 10


def _drain(runner: SourceRunner) -> list[Block]:
    out: list[Block] = []
    deadline = time.monotonic() + 60
    while True:
        blocks = runner.get(0.25, 1)
        if not blocks and runner.done:
            return out
        out += blocks
        assert time.monotonic() < deadline, "the source did not finish"


def test_a_source_at_max_speed_is_read_in_the_consumers_thread() -> None:
    x = np.arange(300, dtype=np.float32).reshape(-1, 1)
    blocks = [Block(x[i : i + 100], i / 100.0, i, 100.0) for i in range(0, 300, 100)]
    src = _ListSource(blocks, speed=0.0)
    runner = SourceRunner(src, max_blocks=2, merge_below=16)
    runner.start()
    try:
        got = _drain(runner)
    finally:
        runner.stop()
    assert [(b.seq, len(b.samples)) for b in got] == [(0, 300)]
    assert np.array_equal(got[0].samples, x)
    assert runner.state is SourceState.FINISHED
    assert runner.samples_in == 300
    assert src.readers == {threading.current_thread().name}, "read in the consumer's thread"


def test_a_read_error_in_the_consumers_thread_is_recovered_by_the_source_thread() -> None:
    x = np.arange(400, dtype=np.float32).reshape(-1, 1)
    blocks = [Block(x[i : i + 100], i / 100.0, i, 100.0) for i in range(0, 400, 100)]
    # the third read fails: the source is reopened (budget spent once), and what comes
    # next follows a hole, so no window spans the failure
    src = _ListSource(blocks, speed=0.0, fail={3: SourceError("cable pulled")})
    runner = SourceRunner(src, merge_below=16, backoff_min_s=0.01, backoff_max_s=0.02)
    runner.start()
    try:
        got = _drain(runner)
    finally:
        runner.stop()
    assert [(b.seq, len(b.samples), b.gap_before) for b in got] == [
        (0, 200, False),
        (200, 200, True),
    ]
    assert src.opens == 2
    assert runner.restarts == 1
    assert runner.last_error == "cable pulled"
    assert runner.state is SourceState.FINISHED

    # a bug in a source (not a SourceError) fails it, as in its own thread
    crash = _ListSource(blocks, speed=0.0, fail={2: ValueError("bug")})
    runner = SourceRunner(crash, merge_below=16)
    runner.start()
    try:
        got = _drain(runner)
    finally:
        runner.stop()
    assert [(b.seq, len(b.samples)) for b in got] == [(0, 100)]
    assert runner.state is SourceState.FAILED
    assert "internal error" in runner.last_error


def _signal(n: int) -> npt.NDArray[np.float32]:
    return SyntheticSignal(SignalSpec(seed=3, anomalies=True)).render(0, n)


def _run(
    model: LoadedModel, x: npt.NDArray[np.float32], block: int, scorer: bool, shadow: bool
) -> tuple[list[AnomalyEvent], list[float], list[int], list[int], StreamPipeline]:
    """Feed `x` in blocks; (events, scores in order, scorer call sizes, shadow part
    sizes, the pipeline)."""
    pre = model.card.preprocessing
    policy = AlarmPolicy(model.card.threshold, min_on=2, min_off=3)
    pipe = StreamPipeline("s", model, policy, window=pre.window, hop=pre.hop, max_batch=16)
    calls: list[int] = []
    parts: list[int] = []
    scores: list[float] = []
    if scorer:

        def score(m: LoadedModel, w: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
            calls.append(len(w))
            s = m.scores_normalized(w)
            scores.extend(s.tolist())
            return s

        pipe.scorer = score
    if shadow:

        def hook(w: Windows, s: npt.NDArray[np.float64], _m: LoadedModel) -> None:
            parts.append(len(w.data))

        pipe.shadow = hook
    events: list[AnomalyEvent] = []
    for i in range(0, len(x), block):
        # 1 Hz: every sample's time is its index, exactly, however the blocks are cut
        events += pipe.process(Block(x[i : i + block], float(i), i, 1.0))
    return events, scores, calls, parts, pipe


@pytest.mark.parametrize("shadow", [False, True], ids=["no-shadow", "shadow"])
def test_a_large_block_is_one_hand_over_and_scores_as_small_blocks(shadow: bool) -> None:
    model = load_model(MODEL, PROFILE)
    x = _signal(40_000)
    # the reference: blocks of 256 samples, each one scorer call of up to 16 windows (a
    # single window is scored by another summation: the last bit may differ)
    ref_events, ref_scores, _c, _p, ref = _run(model, x, 256, scorer=True, shadow=False)
    events, scores, calls, parts, pipe = _run(model, x, 4_000, scorer=True, shadow=shadow)
    assert ref.stats.alarms > 0, "the signal's anomalies open alarms"
    assert scores == ref_scores
    assert events == ref_events
    assert pipe.stats.windows == ref.stats.windows
    assert pipe.stats.last_score == ref.stats.last_score
    assert pipe.take_interval().score_max == ref.take_interval().score_max
    # 4,000 samples: ~250 windows per block, each block's windows in one scorer call
    assert len(calls) == 10
    assert max(calls) > 200
    if shadow:  # an OTA candidate beside it still sees parts of at most max_batch
        assert max(parts) == 16
        assert sum(parts) == pipe.stats.windows
    # without a scorer, the model is called with max_batch windows at a time and
    # scores the same
    model.backend.calls = 0
    events2, _s, _c, _p, alone = _run(model, x, 4_000, scorer=False, shadow=shadow)
    assert events2 == ref_events
    assert alone.stats.last_score == ref.stats.last_score
    assert model.backend.calls >= alone.stats.windows // 16


def test_a_request_larger_than_max_batch_runs_in_bounded_backend_calls() -> None:
    model = load_model(MODEL, PROFILE)
    sched = InferenceScheduler(model, max_batch=8, max_delay_s=0.0)
    pre = model.card.preprocessing
    x = model.normalize(_signal(20 * pre.window).reshape(20, pre.window, -1))
    ref = model.scores_normalized(x)
    calls = model.backend.calls
    assert np.array_equal(sched.score(model, x), ref)  # no worker: in this thread
    assert model.backend.calls - calls == 3  # 8 + 8 + 4 windows
    stop = threading.Event()
    t = threading.Thread(target=sched.run, args=(Loop("scheduler", stop, Faults({}, {})),))
    t.start()
    try:
        sched.attach()
        sched.attach()  # two clients: through the worker
        calls = model.backend.calls
        assert np.array_equal(sched.score(model, x), ref)
        assert model.backend.calls - calls == 3
        assert sched.snapshot()["batches"] == 1
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


@pytest.mark.parametrize("speed", [1.0, 0.0], ids=["queued", "read-in-consumer"])
def test_a_consumer_that_learns_between_blocks_gets_the_sources_blocks(speed: float) -> None:
    x = np.arange(340, dtype=np.float32).reshape(-1, 1)
    # 100-sample blocks stay as they are; 10-sample ones still travel a hop (16) at a time
    cuts = [0, 100, 200, 300, 310, 320, 330, 340]
    blocks = [Block(x[a:b], a / 100.0, a, 100.0) for a, b in itertools.pairwise(cuts)]
    src = _ListSource(blocks, speed=speed)
    runner = SourceRunner(src, max_blocks=64, merge_below=16, merge_backlog=False)
    runner.start()
    try:
        if speed:  # a live source: let it queue everything first
            deadline = time.monotonic() + 60
            while runner.state is not SourceState.FINISHED:
                assert time.monotonic() < deadline, "the source did not finish"
                time.sleep(0.01)
        got = _drain(runner)
    finally:
        runner.stop()
    assert [len(b.samples) for b in got] == [100, 100, 100, 20, 20]
    assert np.array_equal(np.concatenate([b.samples for b in got]), x)


def test_tiny_blocks_at_max_speed_are_read_a_bounded_number_per_turn() -> None:
    # 1-sample blocks: each turn reads at most PULL_MAX_READS of them, so a stream's
    # thread never holds the interpreter for thousands of reads (64 such streams kept
    # the main loop from its watchdog ping for 2.3 s)
    x = np.arange(1_000, dtype=np.float32).reshape(-1, 1)
    blocks = [Block(x[i : i + 1], i / 100.0, i, 100.0) for i in range(len(x))]
    runner = SourceRunner(_ListSource(blocks, speed=0.0), merge_below=16)
    runner.start()
    handed: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not runner.done:
            assert time.monotonic() < deadline, "the source did not finish"
            got = runner.get(0.25, 16)
            if got:
                handed.append(sum(len(b.samples) for b in got))
    finally:
        runner.stop()
    assert sum(handed) == len(x)
    assert max(handed) <= PULL_MAX_READS
    assert len(handed) >= len(x) // PULL_MAX_READS
