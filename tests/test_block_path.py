"""The per-block path stays cheap without changing what is scored.

Tiny blocks (a serial sensor's single samples) reach the stream one window-worth at a
time, merged only where nothing lies between them (a hole, another rate) and with
every sample's time kept; sensor health with nothing configured skips its per-sample
work but still withholds a NaN reading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from edge_agent.pipeline.health_config import ChannelRange, SensorHealthConfig
from edge_agent.pipeline.sensor_health import HealthCondition, SensorHealthMonitor
from edge_agent.pipeline.windows import Windower
from edge_agent.sources.base import Block, Source
from edge_agent.sources.runner import SourceRunner
from edge_agent.sources.synthetic import Options, SyntheticSource


@dataclass(frozen=True)
class _ListOptions:
    channels: tuple[str, ...] = ("x",)
    rate_hz: float = 100.0
    speed: float = 0.0  # not live: the runner waits for room instead of dropping
    blocks: tuple[Block, ...] = field(default=())


class _ListSource(Source):
    """Hands out a fixed list of blocks, then finishes (a recorded sensor)."""

    kind = "list"

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__("list", _ListOptions(blocks=tuple(blocks)))
        self._left = list(blocks)

    def open(self) -> None:
        pass

    def read(self, timeout: float) -> Block | None:
        if not self._left:
            self.finished = True
            return None
        return self._left.pop(0)


def _drain(runner: SourceRunner, min_samples: int) -> list[Block]:
    out: list[Block] = []
    deadline = time.monotonic() + 60
    while True:
        blocks = runner.get(0.25, min_samples)
        if not blocks and runner.done:
            return out
        out += blocks
        assert time.monotonic() < deadline, "the source did not finish"


def test_single_samples_are_handed_over_a_hop_at_a_time_unchanged() -> None:
    src = SyntheticSource("s", Options(block=1, speed=0.0, anomalies=False))
    expected = SyntheticSource("e", Options(block=4_000, speed=0.0, anomalies=False))
    src.open()
    expected.open()
    ref = expected.read(1.0)
    assert ref is not None
    runner = SourceRunner(src, max_blocks=64, merge_below=16)
    runner.start()
    got: list[Block] = []
    handed: list[int] = []  # samples per hand-over
    try:
        while sum(handed) < 4_000:
            blocks = runner.get(5.0, 16)
            handed.append(sum(len(b.samples) for b in blocks))
            # merged while shorter than the hop: only the newest block may be shorter
            assert all(len(b.samples) == 16 for b in blocks[:-1]), [len(b.samples) for b in blocks]
            got += blocks
    finally:
        runner.stop()
    assert all(n >= 16 for n in handed), handed
    assert len(handed) <= 4_000 // 16 + 1, handed
    samples = np.concatenate([b.samples for b in got])[:4_000]
    assert np.array_equal(samples, ref.samples)
    # numbering and timing follow on exactly as the source gave them
    seq = 0
    for b in got:
        assert b.seq == seq
        # (each source counts time from its own start)
        t = b.time_of(0) - got[0].time_of(0)
        assert t == pytest.approx(ref.time_of(b.seq) - ref.time_of(0), abs=1e-6)
        seq += len(b.samples)


def test_blocks_are_not_merged_across_a_hole_and_keep_their_own_times() -> None:
    one = np.ones((1, 1), np.float32)
    blocks = [
        Block(one, 10.0, 0, 100.0),
        Block(one, 10.013, 1, 100.0),  # a live source's receive time: not on the grid
        Block(one, 10.02, 2, 100.0),
        Block(one, 50.0, 3, 100.0, gap_before=True),  # after a reconnect
        Block(one, 50.01, 5, 100.0),  # sample 4 lost
    ]
    runner = SourceRunner(_ListSource(blocks), max_blocks=64, merge_below=16)
    runner.start()
    try:
        got = _drain(runner, 16)
    finally:
        runner.stop()
    assert [(b.seq, len(b.samples), b.gap_before) for b in got] == [
        (0, 3, False),
        (3, 1, True),
        (5, 1, False),
    ]
    first = got[0]
    assert [first.time_of(i) for i in range(3)] == [10.0, 10.013, 10.02]


def test_a_window_needs_what_is_left_of_it() -> None:
    w = Windower(64, 16, 1)
    assert w.samples_to_next_window() == 64
    w.push(np.zeros((60, 1), np.float32), 0)
    assert w.samples_to_next_window() == 4
    w.push(np.zeros((4, 1), np.float32), 60)
    assert w.samples_to_next_window() == 16


@pytest.mark.parametrize(
    "config",
    [
        SensorHealthConfig(),
        SensorHealthConfig(ranges=(ChannelRange("a", -5.0, 5.0),), stuck_after_samples=50),
    ],
    ids=["nothing-configured", "ranges-and-stuck"],
)
def test_a_bad_reading_is_withheld_whatever_health_checks_run(config: SensorHealthConfig) -> None:
    mon = SensorHealthMonitor("s", ("a", "b"), None, config, 0.0)
    rng = np.random.default_rng(1)
    seq = 0
    for i in range(20):  # clean blocks first: the cheap path where nothing is configured
        x = rng.standard_normal((16, 2)).astype(np.float32)
        ev, bad = mon.observe(Block(x, i * 0.16, seq, 100.0), float(i))
        assert ev == []
        assert not bad.any()
        seq += 16
    x = rng.standard_normal((16, 2)).astype(np.float32)
    x[3, 1] = np.nan
    x[7, 0] = 3e38  # finite, but squares past float32: still a reading, not a fault here
    ev, bad = mon.observe(Block(x, 4.0, seq, 100.0), 20.0)
    assert bad[3]
    assert next((e.condition, e.channel, e.active) for e in ev) == (
        HealthCondition.NON_FINITE,
        "b",
        True,
    )
    assert (HealthCondition.NON_FINITE, "b") in mon.active
