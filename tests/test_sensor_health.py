"""Each sensor-health condition starts and ends with its event; bad samples are masked."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.pipeline.sensor_health import (
    ChannelRange,
    HealthCondition,
    HealthEvent,
    SensorHealthConfig,
    SensorHealthMonitor,
)
from edge_agent.sources.base import Block

CH = ("vib", "current")
RATE = 100.0


def _mon(**kw: object) -> SensorHealthMonitor:
    cfg = SensorHealthConfig(clear_after_samples=10, **kw)  # type: ignore[arg-type]
    return SensorHealthMonitor("press", CH, RATE, cfg, now=0.0)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(0, 1, n), rng.normal(5, 0.1, n)]).astype(np.float32)


def _blk(x: np.ndarray) -> Block:
    return Block(np.asarray(x, np.float32), 0.0, 0, RATE)


def _keys(events: list[HealthEvent]) -> list[tuple[HealthCondition, str, bool]]:
    return [(e.condition, e.channel, e.active) for e in events]


def test_clean_data_raises_nothing() -> None:
    m = _mon(stuck_after_samples=20, ranges=(ChannelRange("current", 0.0, 30.0),))
    for k in range(20):
        ev, bad = m.observe(_blk(_noise(32, k)), now=k * 0.32)
        assert ev == []
        assert not bad.any()
    assert m.check(now=20 * 0.32) == []
    assert m.active == frozenset()


def test_non_finite_start_and_end() -> None:
    m = _mon()
    x = _noise(32)
    x[25, 1] = np.nan
    x[26, 1] = np.inf  # 5 clean samples after: not yet cleared (needs 10)
    ev, bad = m.observe(_blk(x), now=1.0)
    assert _keys(ev) == [(HealthCondition.NON_FINITE, "current", True)]
    assert "2 non-finite" in ev[0].detail
    assert bad.nonzero()[0].tolist() == [25, 26]
    assert (HealthCondition.NON_FINITE, "current") in m.active
    ev, bad = m.observe(_blk(_noise(32, 1)), now=1.3)  # 10+ clean samples: it ends
    assert _keys(ev) == [(HealthCondition.NON_FINITE, "current", False)]
    assert not bad.any()


def test_sporadic_nan_is_one_event_not_a_flood() -> None:
    m = _mon()
    events = []
    for k in range(10):
        x = _noise(32, k)
        x[::8, 0] = np.nan  # never 10 clean samples in a row
        events += m.observe(_blk(x), now=k)[0]
    assert _keys(events) == [(HealthCondition.NON_FINITE, "vib", True)]


def test_out_of_range_start_and_end() -> None:
    m = _mon(ranges=(ChannelRange("current", 0.0, 30.0),))
    x = _noise(32)
    x[28:30, 1] = [45.0, -1.0]
    ev, bad = m.observe(_blk(x), now=1.0)
    assert _keys(ev) == [(HealthCondition.OUT_OF_RANGE, "current", True)]
    assert "[0, 30]" in ev[0].detail
    assert bad.nonzero()[0].tolist() == [28, 29]
    ev, _ = m.observe(_blk(_noise(32, 2)), now=1.3)
    assert _keys(ev) == [(HealthCondition.OUT_OF_RANGE, "current", False)]


def test_short_glitch_inside_one_block_starts_and_ends() -> None:
    m = _mon(ranges=(ChannelRange("vib", -10.0, 10.0),))
    x = _noise(64)
    x[3, 0] = 99.0  # then 60 clean samples in the same block
    ev, _ = m.observe(_blk(x), now=1.0)
    assert _keys(ev) == [
        (HealthCondition.OUT_OF_RANGE, "vib", True),
        (HealthCondition.OUT_OF_RANGE, "vib", False),
    ]


def test_stuck_value_across_blocks_start_and_end() -> None:
    m = _mon(stuck_after_samples=50)
    first = _noise(32)
    first[20:, 0] = 0.25  # the run starts inside this block ...
    ev, bad = m.observe(_blk(first), now=1.0)
    assert ev == []
    stuck = _noise(32, 1)
    stuck[:, 0] = 0.25  # ... and reaches 50 here (12 + 32 = 44 -> not yet)
    ev, _ = m.observe(_blk(stuck), now=1.3)
    assert ev == []
    ev, bad = m.observe(_blk(stuck), now=1.6)  # 76 in a row
    assert _keys(ev) == [(HealthCondition.STUCK, "vib", True)]
    # samples from the 50th equal value on are masked: run length 45..76 in this block
    assert bad.nonzero()[0].tolist() == list(range(5, 32))
    ev, bad = m.observe(_blk(_noise(32, 3)), now=1.9)
    assert _keys(ev) == [(HealthCondition.STUCK, "vib", False)]
    assert not bad.any()


def test_stall_start_and_end() -> None:
    m = _mon(stall_after_s=5.0)
    m.observe(_blk(_noise(10)), now=1.0)
    assert m.check(now=5.9) == []
    ev = m.check(now=6.1)
    assert _keys(ev) == [(HealthCondition.STALLED, "", True)]
    assert m.check(now=7.0) == []  # reported once
    ev, _ = m.observe(_blk(_noise(10)), now=8.0)
    assert _keys(ev) == [(HealthCondition.STALLED, "", False)]


def test_rate_far_from_configured_start_and_end() -> None:
    m = _mon(rate_window_s=2.0, rate_tolerance=0.5)
    t = 0.0
    events: list[HealthEvent] = []
    for _ in range(30):  # 10 samples every 0.5 s = 20 Hz, configured 100 Hz
        t += 0.5
        events += m.observe(_blk(_noise(10)), now=t)[0]
        events += m.check(now=t)
    assert _keys(events) == [(HealthCondition.RATE, "", True)]
    assert "measured 20.0 Hz" in events[0].detail
    events = []
    for _ in range(10):  # back to 100 Hz
        t += 0.5
        events += m.observe(_blk(_noise(50)), now=t)[0]
        events += m.check(now=t)
    assert _keys(events) == [(HealthCondition.RATE, "", False)]


def test_rate_check_off_when_rate_unknown() -> None:
    m = SensorHealthMonitor("r", CH, None, SensorHealthConfig(rate_window_s=1.0), now=0.0)
    for k in range(1, 20):
        m.observe(_blk(_noise(1000)), now=k * 0.5)
        assert m.check(now=k * 0.5) == []


def test_disconnected_start_and_end() -> None:
    m = _mon()
    assert m.set_connected(True, now=1.0) == []
    ev = m.set_connected(False, now=2.0)
    assert _keys(ev) == [(HealthCondition.DISCONNECTED, "", True)]
    assert (HealthCondition.DISCONNECTED, "") in m.active
    assert m.set_connected(False, now=3.0) == []
    ev = m.set_connected(True, now=4.0)
    assert _keys(ev) == [(HealthCondition.DISCONNECTED, "", False)]


def test_unknown_range_channel_is_a_config_error() -> None:
    cfg = SensorHealthConfig(ranges=(ChannelRange("temp", 0.0, 1.0),))
    with pytest.raises(ConfigError, match="unknown channel 'temp'"):
        SensorHealthMonitor("s", CH, RATE, cfg, now=0.0)


def test_sensor_health_in_stream_config() -> None:
    stream = {
        "name": "s",
        "source": {"kind": "synthetic"},
        "sensor_health": {
            "stuck_after_samples": 200,
            "ranges": [{"channel": "current", "min": 0.0, "max": 30.0}],
        },
    }
    cfg = parse_config({"device_id": "gw", "streams": [stream]})
    sh = cfg.streams[0].sensor_health
    assert sh.stuck_after_samples == 200
    assert sh.ranges == (ChannelRange("current", 0.0, 30.0),)
    stream["sensor_health"] = {"ranges": [{"channel": "c", "min": 3.0, "max": 1.0}]}
    with pytest.raises(ConfigError, match=r"sensor_health\.ranges\[0\].*min 3.0 must be < max"):
        parse_config({"device_id": "gw", "streams": [stream]})
    default = parse_config(
        {"device_id": "gw", "streams": [{"name": "d", "source": {"kind": "synthetic"}}]}
    )
    assert default.streams[0].sensor_health == SensorHealthConfig()


# -- a camera frame is one channel of many pixels: checked by its mean --------------------
def test_frame_channel_is_checked_by_its_mean_brightness() -> None:
    cfg = SensorHealthConfig(
        ranges=(ChannelRange("pixels_8x8", 0.05, 0.95),),
        stuck_after_samples=3,
        clear_after_samples=2,
    )
    mon = SensorHealthMonitor("cam", ("pixels_8x8",), None, cfg, now=0.0)
    rng = np.random.default_rng(4)
    live = rng.uniform(0.2, 0.8, (4, 64)).astype(np.float32)
    ev, bad = mon.observe(Block(live, 0.0, 0, 5.0), 0.1)
    assert ev == []
    assert not bad.any()
    covered = np.full((2, 64), 0.01, np.float32)  # a lens cap: dark frames
    ev, bad = mon.observe(Block(covered, 1.0, 4, 5.0), 1.0)
    assert [(e.condition, e.channel, e.active) for e in ev] == [
        (HealthCondition.OUT_OF_RANGE, "pixels_8x8", True)
    ]
    assert bad.all()
    frozen = np.repeat(live[:1], 4, axis=0)  # the same picture again and again
    ev, bad = mon.observe(Block(frozen, 2.0, 6, 5.0), 2.0)
    conds = {(e.condition, e.active) for e in ev}
    assert (HealthCondition.STUCK, True) in conds
    assert (HealthCondition.OUT_OF_RANGE, False) in conds
    assert bad.tolist() == [False, False, True, True]
    one_nan = live[:1].copy()
    one_nan[0, 17] = np.nan  # one dead pixel value poisons the frame, flagged
    ev, bad = mon.observe(Block(one_nan, 3.0, 10, 5.0), 3.0)
    assert (HealthCondition.NON_FINITE, True) in {(e.condition, e.active) for e in ev}
    assert bad.tolist() == [True]


def test_rate_counts_what_the_sensor_delivered_not_what_the_agent_kept() -> None:
    """Blocks the agent dropped (queue full) still arrived from the sensor: their
    sequence numbers say so, and an agent falling behind is no sensor fault."""
    m = _mon(rate_window_s=2.0, rate_tolerance=0.5)
    t, seq = 0.0, 0
    events: list[HealthEvent] = []
    for _ in range(30):  # 50 samples per 0.5 s from the sensor (100 Hz); 40 dropped
        t += 0.5
        seq += 40
        events += m.observe(Block(_noise(10), t, seq, RATE), now=t)[0]
        seq += 10
        events += m.check(now=t)
    assert events == []


def test_camera_delivering_far_fewer_frames_than_it_reports_is_a_rate_fault() -> None:
    """A camera's frames are scored one at a time and the latest-frame policy skips the
    rest: the skipped ones count (frame numbers), so a slow model is no fault, but a
    camera that reports 30 fps and delivers 3 is."""
    cfg = SensorHealthConfig(rate_window_s=2.0, rate_tolerance=0.5, clear_after_samples=2)
    m = SensorHealthMonitor("cam", ("pixels_8x8",), None, cfg, now=0.0)
    frame = np.full((1, 64), 0.5, np.float32)
    m.set_rate(30.0, now=0.0)  # known once the camera is open
    t, seq = 0.0, 0
    events: list[HealthEvent] = []
    for _ in range(12):  # the model scores 3 frames/s; the camera delivers 30/s
        t += 1 / 3
        events += m.observe(Block(frame, t, seq, 30.0), now=t)[0] + m.check(now=t)
        seq += 10
    assert events == []
    for _ in range(12):  # now the camera itself delivers only 3 frames/s
        t += 1 / 3
        events += m.observe(Block(frame, t, seq, 30.0), now=t)[0] + m.check(now=t)
        seq += 1
    assert _keys(events) == [(HealthCondition.RATE, "", True)]
    assert "configured 30.0 Hz" in events[0].detail


def test_sample_condition_events_carry_the_samples_time_not_the_clock() -> None:
    """A replayed recording's sensor events land at the file's times: the start at the
    first bad sample, the end at the sample that cleared it; the clock is not asked."""
    m = _mon()
    t0 = 1_600_000_000.0  # a recording from 2020, scored in 2026
    x = _noise(32)
    x[28, 0] = np.nan  # 3 clean samples after it: still in force (needs 10)
    ev, _ = m.observe(Block(x, t0, 0, RATE), now=99_999.0)
    assert _keys(ev) == [(HealthCondition.NON_FINITE, "vib", True)]
    assert ev[0].ts == pytest.approx(t0 + 28 / RATE)
    ev, _ = m.observe(Block(_noise(32, 1), t0 + 0.32, 32, RATE), now=99_999.5)
    assert _keys(ev) == [(HealthCondition.NON_FINITE, "vib", False)]
    assert ev[0].ts == pytest.approx(t0 + 0.32 + 31 / RATE)


def test_a_gap_event_is_dated_at_the_first_sample_after_the_hole() -> None:
    m = _mon(gap_event_s=1.0)
    t0 = 1_600_000_000.0
    m.observe(Block(_noise(32), t0, 0, RATE), now=5.0)
    after = t0 + 0.32 + 30.0  # 30 s with no data
    ev, _ = m.observe(Block(_noise(32, 1), after, 32, RATE, True), now=6.0)
    assert _keys(ev) == [(HealthCondition.GAP, "", True)]
    assert ev[0].ts == pytest.approx(after)
