"""Windows never span a hole: a serial board's lost frames, damaged frames, rejected
lines and unplugs restart windowing, so a normal signal raises no anomaly.

Real parts: a pseudo-terminal board read by the serial source through its runner, the
bundled vibration model and the stream pipeline, the sensor-health monitor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from edge_agent.pipeline.alarms import AlarmPolicy, Transition
from edge_agent.pipeline.sensor_health import (
    HealthCondition,
    HealthEvent,
    SensorHealthConfig,
    SensorHealthMonitor,
)
from edge_agent.pipeline.stream import AnomalyEvent, StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import load_model
from edge_agent.sources.base import Block
from edge_agent.sources.framing import encode_frame
from edge_agent.sources.runner import SourceRunner, SourceState
from edge_agent.sources.serial import Options, SerialSource
from edge_agent.sources.synth_signal import CHANNELS, SignalSpec, SyntheticSignal
from tests.agentutil import MODELS
from tests.pty_board import PtyBoard

RATE = 100.0
FRAME = 10  # samples per binary frame, as a typical board sends
NORMAL = SignalSpec(anomalies=False)


@pytest.fixture
def board(tmp_path: Path) -> Iterator[PtyBoard]:
    b = PtyBoard(tmp_path / "serial" / "by-id" / "usb-Acme_VibBoard_0002-if00")
    yield b
    b.close()


@dataclass
class Stream:
    """The serial source, its runner, the pipeline and sensor health, wired as in the agent."""

    runner: SourceRunner
    pipe: StreamPipeline
    health: SensorHealthMonitor
    events: list[AnomalyEvent] = field(default_factory=list)
    health_events: list[HealthEvent] = field(default_factory=list)
    samples: int = 0

    def drain_until(self, n_samples: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.samples < n_samples and time.monotonic() < deadline:
            for b in self.runner.get(0.1):
                hev, bad = self.health.observe(b, time.time())
                self.health_events += hev
                self.events += self.pipe.process(b, bad if bad.any() else None)
                self.samples += len(b.samples)
        assert self.samples >= n_samples, f"only {self.samples} of {n_samples} samples arrived"

    @property
    def alarm_starts(self) -> list[AnomalyEvent]:
        return [e for e in self.events if e.transition is Transition.START]


def _stream(board: PtyBoard, fmt: str) -> Stream:
    model = load_model(MODELS / "vibration-ae-fp32-onnx", Profile(name="t"))
    card = model.card
    policy = AlarmPolicy(
        card.threshold,
        min_on=card.alarm.min_on,
        min_off=card.alarm.min_off,
        hysteresis=card.alarm.hysteresis,
    )
    pre = card.preprocessing
    pipe = StreamPipeline("spindle", model, policy, window=pre.window, hop=pre.hop)
    src = SerialSource("spindle", Options(port=str(board.path), channels=CHANNELS, format=fmt))  # type: ignore[arg-type]
    runner = SourceRunner(src, backoff_min_s=0.05, backoff_max_s=0.2)
    health = SensorHealthMonitor("spindle", CHANNELS, None, SensorHealthConfig(), time.time())
    runner.start()
    _wait_state(runner, SourceState.RUNNING)  # opening the port flushes what came before
    return Stream(runner, pipe, health)


def _wait_state(runner: SourceRunner, state: SourceState, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while runner.state is not state and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runner.state is state


def _frames(sig: SyntheticSignal, start: int, n: int, *, lose: int = 0, bad_crc: int = 0) -> bytes:
    """Binary frames of the signal's samples [start, start+n); every `lose`-th frame is
    never sent, every `bad_crc`-th arrives with a damaged CRC."""
    out = []
    for pos in range(start, start + n, FRAME):
        fseq = pos // FRAME
        frame = encode_frame(sig.render(pos, FRAME), frame_seq=fseq)
        if lose and fseq % lose == lose - 1:
            continue
        if bad_crc and fseq % bad_crc == bad_crc - 1:
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
        out.append(frame)
    return b"".join(out)


def _csv_lines(sig: SyntheticSignal, start: int, n: int, *, garble: int) -> tuple[bytes, int]:
    """CSV lines; every `garble`-th gets one byte replaced by 0xFF. (bytes, good lines)."""
    out, good = [], 0
    for i, row in enumerate(sig.render(start, n)):
        line = ",".join(f"{v:.5f}" for v in row).encode()
        if i % garble == garble // 2:
            line = line[:4] + b"\xff" + line[5:]
        else:
            good += 1
        out.append(line + b"\r\n")
    return b"".join(out), good


def _feed(board: PtyBoard, data: bytes) -> threading.Thread:
    """Write in the background: the pty holds only a few KiB until the source reads."""
    t = threading.Thread(target=board.write, args=(data,), daemon=True)
    t.start()
    return t


def _feed_chunks(board: PtyBoard, chunks: list[bytes], every_s: float) -> threading.Thread:
    def write() -> None:
        for c in chunks:
            board.write(c)
            time.sleep(every_s)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def _run(board: PtyBoard, fmt: str, data: bytes, expect_samples: int) -> Stream:
    s = _stream(board, fmt)
    try:
        _feed(board, data)
        s.drain_until(expect_samples)
    finally:
        s.runner.stop()
    return s


def test_normal_signal_with_1_in_40_lost_frames_raises_no_alarm(board: PtyBoard) -> None:
    sig = SyntheticSignal(NORMAL)
    frames = 300
    lost = [f for f in range(frames) if f % 40 == 39]  # frames 39, 79, ... 279: 7
    s = _run(
        board, "binary", _frames(sig, 0, frames * FRAME, lose=40), (frames - len(lost)) * FRAME
    )
    counters = s.runner.source.snapshot_counters()
    assert counters["lost_frames"] == len(lost)
    assert s.pipe.windower.gaps == len(lost)
    assert s.pipe.windower.lost_samples == len(lost) * FRAME
    assert s.pipe.stats.windows > 100
    assert s.alarm_starts == [], [e.ts for e in s.alarm_starts]


def test_normal_signal_with_crc_failures_raises_no_alarm(board: PtyBoard) -> None:
    sig = SyntheticSignal(NORMAL)
    frames = 300
    damaged = [f for f in range(frames) if f % 8 == 7]  # 37 frames
    s = _run(
        board, "binary", _frames(sig, 0, frames * FRAME, bad_crc=8), (frames - len(damaged)) * FRAME
    )
    counters = s.runner.source.snapshot_counters()
    assert counters["crc_errors"] >= len(damaged)
    assert counters["lost_frames"] == len(damaged)
    assert s.pipe.windower.gaps == len(damaged)
    assert s.pipe.stats.windows >= len(damaged)  # 70 samples between holes: one window each
    assert s.alarm_starts == [], [e.ts for e in s.alarm_starts]


def test_normal_signal_with_garbled_csv_lines_raises_no_alarm(board: PtyBoard) -> None:
    sig = SyntheticSignal(NORMAL)
    data, good = _csv_lines(sig, 0, 3000, garble=20)
    s = _run(board, "csv", data, 3000)  # each lost line bridged: every sample number used
    counters = s.runner.source.snapshot_counters()
    assert counters["bad_lines"] == 3000 - good
    # one line = one sample: a one-sample hole is bridged, not a restart, so the
    # stream still scores (a restart every 20 lines would leave no 64-sample window)
    assert counters["filled_samples"] == 3000 - good
    assert s.pipe.windower.gaps == 0
    assert s.pipe.stats.windows > 100
    assert s.alarm_starts == [], [e.ts for e in s.alarm_starts]


def test_two_lost_lines_in_a_row_are_a_hole(board: PtyBoard) -> None:
    sig = SyntheticSignal(NORMAL)
    rows = sig.render(0, 200)
    lines = [",".join(f"{v:.5f}" for v in r).encode() + b"\n" for r in rows]
    lines[100] = lines[101] = b"\xff\xfe\n"  # longer than max_fill_samples = 1
    s = _run(board, "csv", b"".join(lines), 198)
    assert s.runner.source.snapshot_counters().get("filled_samples", 0) == 0
    assert s.pipe.windower.gaps == 1
    assert s.pipe.windower.lost_samples == 2


def _unplug_run(board: PtyBoard, spec: SignalSpec) -> tuple[Stream, SyntheticSignal]:
    """12 s of signal, the board unplugged for 8 s (the machine runs on: the signal
    resumes 8 s later), then 14 s more."""
    sig = SyntheticSignal(spec)
    before, outage, after = 1200, 800, 1400
    s = _stream(board, "binary")
    try:
        _feed(board, _frames(sig, 0, before))
        s.drain_until(before)
        unplugged = time.monotonic()
        board.unplug()
        deadline = time.monotonic() + 30
        while s.runner.state is not SourceState.RECONNECTING and time.monotonic() < deadline:
            s.drain_until(before)
            time.sleep(0.05)
        assert s.runner.state is SourceState.RECONNECTING
        time.sleep(max(0.0, unplugged + 8.0 - time.monotonic()))
        board.replug()
        _wait_state(s.runner, SourceState.RUNNING)
        # the first second as a board sends it, one frame per 0.1 s, so the receive
        # times after the replug are those of a board streaming live; then the rest
        paced = [_frames(sig, before + outage + k, FRAME) for k in range(0, 100, FRAME)]
        rest = _frames(sig, before + outage + 100, after - 100)
        _feed_chunks(board, [*paced, rest], every_s=1.0 / FRAME)
        s.drain_until(before + after)
    finally:
        s.runner.stop()
    return s, sig


def test_normal_signal_with_an_8s_unplug_raises_no_alarm(board: PtyBoard) -> None:
    s, _ = _unplug_run(board, NORMAL)
    assert s.pipe.stats.windows > 100
    assert s.pipe.windower.gaps == 1
    assert s.alarm_starts == [], [e.ts for e in s.alarm_starts]
    # the outage itself is a sensor-health event, not a process anomaly
    gaps = [h for h in s.health_events if h.condition is HealthCondition.GAP and h.active]
    assert len(gaps) == 1, s.health_events
    hole_s = float(gaps[0].detail.split()[2])
    assert hole_s >= 7.0, gaps[0].detail


def test_anomaly_injected_after_an_unplug_is_still_found(board: PtyBoard) -> None:
    # signal time 20 s is the replug; the anomaly runs from 25 to 30 s
    s, sig = _unplug_run(
        board, SignalSpec(first_anomaly_s=25.0, anomaly_every_s=1000.0, anomaly_duration_s=5.0)
    )
    (anomaly,) = sig.anomalies_between(0, 34.0)
    # sample numbers run on across the outage: signal time = number + 8 s after it
    starts = [
        (e.window_start + (800 if e.window_start >= 1200 else 0)) / RATE for e in s.alarm_starts
    ]
    assert starts, "the anomaly after the replug was missed"
    # every alarm overlaps the injected anomaly (window 0.64 s)
    assert all(anomaly.start_s - 0.64 <= t <= anomaly.end_s for t in starts), starts


def test_hole_before_a_block_restarts_windowing_without_a_sequence_jump() -> None:
    from edge_agent.pipeline.windows import Windower

    w = Windower(window=8, hop=4, channels=1)
    x = np.arange(6, dtype=np.float32).reshape(-1, 1)
    assert len(w.push(x, 0).data) == 0
    out = w.push(x, 6, gap=True)  # follows on by number, but the source saw a hole
    assert len(out.data) == 0  # 6 + 6 samples would make a window if spliced
    assert w.gaps == 1
    out = w.push(x, 12)
    assert [int(s) for s in out.starts] == [6, 10]  # windows from after the hole only


def _monitor_run(hole_s: float) -> list[HealthEvent]:
    """12 s of 100 Hz blocks, the source gone for `hole_s` (reconnecting), 14 s more;
    times are passed in, so the run takes no wall time."""
    mon = SensorHealthMonitor("s", CHANNELS, RATE, SensorHealthConfig(), now=0.0)
    sig = SyntheticSignal(NORMAL)
    events: list[HealthEvent] = []
    seq, t = 0, 0.0
    for _ in range(120):  # 0.1 s blocks
        events += mon.observe(Block(sig.render(seq, 10), t, seq, RATE), t + 0.1)[0]
        events += mon.check(t + 0.1)
        seq, t = seq + 10, t + 0.1
    events += mon.set_connected(False, t)
    gone = t
    while t < gone + hole_s:
        t += 0.5
        events += mon.check(t)
    events += mon.set_connected(True, t)
    for i in range(140):
        blk = Block(sig.render(seq, 10), t, seq, RATE, gap_before=i == 0)
        events += mon.observe(blk, t + 0.1)[0]
        events += mon.check(t + 0.1)
        seq, t = seq + 10, t + 0.1
    return events


def test_an_unplug_is_a_gap_and_disconnected_never_a_rate_fault() -> None:
    events = _monitor_run(8.0)
    kinds = {(e.condition, e.active) for e in events}
    assert (HealthCondition.DISCONNECTED, True) in kinds
    assert (HealthCondition.GAP, True) in kinds
    assert (HealthCondition.GAP, False) in kinds  # cleared by clean samples after it
    assert not [e for e in events if e.condition is HealthCondition.RATE], events


def test_a_short_hole_is_no_gap_event() -> None:
    events = _monitor_run(0.5)
    assert not [e for e in events if e.condition is HealthCondition.GAP]


def test_a_block_dropped_by_the_full_queue_leaves_a_marked_hole() -> None:
    from edge_agent.sources.synthetic import Options as SynthOptions
    from edge_agent.sources.synthetic import SyntheticSource

    # a live source 50x faster than real time and a consumer that does not read
    src = SyntheticSource("demo", SynthOptions(speed=50.0, block=32))
    r = SourceRunner(src, max_blocks=2)
    r.start()
    try:
        deadline = time.monotonic() + 30
        while r.dropped_blocks < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.dropped_blocks >= 3
        blocks = r.get(0.5)
    finally:
        r.stop()
    assert blocks[0].gap_before  # what came before it was dropped
    assert not any(b.gap_before for b in blocks[1:] if b.seq == blocks[0].seq + 32)


def test_status_text_shows_the_holes() -> None:
    from tests.test_status import assess, render_text, snap, state

    now = 1_000_000.0
    st = state(now)
    st["streams"][0]["gaps"] = 7
    text = render_text(snap(st), assess(snap(st), now), now)
    assert "holes: 7 in the data, windowing restarted after each" in text
    st["streams"][0]["gaps"] = 0
    text = render_text(snap(st), assess(snap(st), now), now)
    assert "holes:" not in text


def test_blocks_the_agent_dropped_are_no_gap_in_the_sensors_data() -> None:
    mon = SensorHealthMonitor("s", CHANNELS, RATE, SensorHealthConfig(), now=0.0)
    x = np.zeros((10, len(CHANNELS)), np.float32)
    events: list[HealthEvent] = []
    for k in range(5):
        events += mon.observe(Block(x, k * 0.1, k * 10, RATE), k * 0.1 + 0.1)[0]
    # 3 s of blocks dropped by a full queue: numbers and times both jump by 3 s
    events += mon.observe(Block(x, 3.5, 350, RATE, gap_before=True), 3.6)[0]
    assert not [e for e in events if e.condition is HealthCondition.GAP]
    # 3 s missing with no numbers for it (a reconnect): a hole in the sensor's data
    events += mon.observe(Block(x, 6.6, 360, RATE, gap_before=True), 6.7)[0]
    (gap,) = [e for e in events if e.condition is HealthCondition.GAP]
    assert gap.detail == "hole of 3.0 s in the data"
