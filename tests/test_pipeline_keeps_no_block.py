"""A stream keeps no turn-sized array between turns: the block it scored is let go when
`process` returns (64 max-speed streams each held their last 384 kB block, and every
turn's allocations then landed in memory gone cold: ~4% of a turn), and events still
carry the time of the sample that decided them."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import load_model
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from tests.agentutil import MODELS


def _pipeline(threshold: float) -> StreamPipeline:
    model = load_model(MODELS / "vibration-ae-fp32-onnx", Profile(name="t"))
    pre = model.card.preprocessing
    return StreamPipeline(
        "s",
        model,
        AlarmPolicy(threshold, min_on=1, min_off=1),
        window=pre.window,
        hop=pre.hop,
        max_batch=64,
    )


def _block(seq: int, n: int) -> Block:
    samples = SyntheticSignal(SignalSpec(seed=3)).render(seq, n)
    times = 1_700_000_000.0 + (seq + np.arange(n, dtype=np.float64)) / 100.0
    return Block(samples, float(times[0]), seq, 100.0, False, times)


def _released(pipe: StreamPipeline, seq: int, n: int) -> tuple[bool, bool, bool]:
    blk = _block(seq, n)
    samples, times = weakref.ref(blk.samples), weakref.ref(blk.times)
    events = pipe.process(blk)
    expect = [float(blk.times[e.window_start + pipe.window - 1 - seq]) for e in events]  # type: ignore[index]
    del blk
    gc.collect()
    return samples() is None, times() is None, bool(expect) and [e.ts for e in events] == expect


def test_a_scored_block_is_not_kept() -> None:
    pipe = _pipeline(threshold=1e9)  # never alarms
    for seq in (0, 4096):  # more windows than max_batch: the block is scored in parts
        samples_gone, times_gone, _ = _released(pipe, seq, 4096)
        assert samples_gone
        assert times_gone
    assert pipe.stats.windows > 0


def test_a_block_that_raises_events_is_not_kept_and_times_them() -> None:
    pipe = _pipeline(threshold=1e-12)  # every window is above: an alarm starts at once
    samples_gone, times_gone, times_right = _released(pipe, 0, 512)
    assert samples_gone
    assert times_gone
    assert times_right  # non-empty: the alarm's START, timed by the block's own times
    assert pipe.stats.alarms == 1
