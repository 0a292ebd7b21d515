"""Time is the sample's time: a replayed file's timestamps give every sample, and every
anomaly event, its time; the rate comes from them; loops keep real-time pacing."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import SourceError
from edge_agent.pipeline.alarms import AlarmPolicy, Transition
from edge_agent.pipeline.stream import AnomalyEvent, StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import load_model
from edge_agent.sources.base import Block
from edge_agent.sources.replay import Options, ReplaySource
from edge_agent.sources.synth_signal import CHANNELS, SignalSpec, SyntheticSignal
from tests.agentutil import MODELS

N = 3000
# anomalies at 5-8 s, 17-20 s and from 29 s of 30 s at 100 Hz (rows 500-800, 1700-2000, 2900-)
SPEC = SignalSpec(first_anomaly_s=5.0, anomaly_every_s=12.0, anomaly_duration_s=3.0)


def _write(path: Path, stamps: list[str], samples: np.ndarray, newline: str = "\n") -> Path:
    rows = (
        f"{t}," + ",".join(f"{v:.6f}" for v in row) for t, row in zip(stamps, samples, strict=True)
    )
    path.write_text(newline.join(["ts," + ",".join(CHANNELS), *rows]) + newline)
    return path


def _read_all(src: ReplaySource, limit: int = 10_000) -> list[Block]:
    src.open()
    out: list[Block] = []
    while len(out) < limit and (b := src.read(0.5)) is not None:
        out.append(b)
    return out


def _events(blocks: list[Block]) -> list[AnomalyEvent]:
    model = load_model(MODELS / "vibration-ae-fp32-onnx", Profile(name="t"))
    pre = model.card.preprocessing
    pipe = StreamPipeline(
        "r",
        model,
        AlarmPolicy(model.card.threshold, min_on=2, min_off=3),
        window=pre.window,
        hop=pre.hop,
    )
    return [e for b in blocks for e in pipe.process(b)]


def _check_event_times(events: list[AnomalyEvent], file_times: np.ndarray, window: int) -> None:
    """Each event's time is the time of the last sample of the window that decided it."""
    assert any(e.transition is Transition.START for e in events)
    for e in events:
        assert e.ts == pytest.approx(file_times[e.window_start + window - 1], abs=1e-6)
        assert e.started_ts <= e.ts


@pytest.mark.parametrize(
    ("label", "step_s", "fmt"),
    [
        ("100 Hz ISO 8601 +01:00", 0.01, "iso"),
        ("5-minute spacing, epoch seconds", 300.0, "s"),
        ("100 Hz epoch milliseconds", 0.01, "ms"),
    ],
)
def test_replayed_event_times_equal_the_triggering_samples_time(
    tmp_path: Path, label: str, step_s: float, fmt: str
) -> None:
    start = datetime(2024, 3, 31, 0, 59, 50, tzinfo=timezone(timedelta(hours=1)))
    times = start.timestamp() + step_s * np.arange(N)
    if fmt == "iso":
        stamps = [
            (start + timedelta(seconds=step_s * i)).isoformat(timespec="milliseconds")
            for i in range(N)
        ]
    elif fmt == "ms":
        stamps = [str(round(t * 1000)) for t in times]
    else:
        stamps = [f"{t:.0f}" for t in times]
    samples = SyntheticSignal(SPEC).render(0, N)
    path = _write(tmp_path / "rec.csv", stamps, samples)
    # no rate_hz: the timestamps give it; speed 0: no need to wait 10 days for 5-min data
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", speed=0))
    assert src.rate_hz == pytest.approx(1.0 / step_s), label
    blocks = _read_all(src)
    got = np.concatenate([b.times for b in blocks if b.times is not None])
    np.testing.assert_allclose(got, times, rtol=0, atol=1e-6)
    _check_event_times(_events(blocks), times, window=64)


def test_rate_from_timestamps_is_the_nominal_rate_at_real_time(tmp_path: Path) -> None:
    stamps = [f"{1_700_000_000 + i / 50:.2f}" for i in range(100)]
    path = _write(tmp_path / "rec.csv", stamps, np.zeros((100, 4)))
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts"))
    assert src.nominal_rate_hz == pytest.approx(50.0)
    fixed = ReplaySource("r", Options(path=str(path), timestamp_column="ts", rate_hz=40.0))
    assert fixed.nominal_rate_hz == 40.0  # a configured rate wins
    no_ts = _write(tmp_path / "plain.csv", ["0"] * 10, np.zeros((10, 4)))
    plain = ReplaySource("r", Options(path=str(no_ts), columns=CHANNELS))
    assert plain.rate_hz == 1.0  # neither: the documented default


def test_loop_keeps_real_time_pacing_and_times_run_on(tmp_path: Path) -> None:
    rate, rows = 100.0, 50  # a 0.5 s recording
    stamps = [f"{1_750_000_000 + i / rate:.2f}" for i in range(rows)]
    path = _write(tmp_path / "short.csv", stamps, SyntheticSignal(SPEC).render(0, rows))
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", loop=True, block=10))
    src.open()
    began = time.monotonic()
    blocks: list[Block] = []
    while time.monotonic() - began < 2.0:
        b = src.read(0.2)
        if b is not None:
            blocks.append(b)
    elapsed = time.monotonic() - began
    delivered = sum(len(b.samples) for b in blocks)
    # paced: never more than the real time elapsed allows (plus the first block);
    # unpaced after the first pass, this would be hundreds of thousands
    assert delivered <= rate * elapsed + 10
    assert delivered >= 2 * rows  # a slow machine still gets past one pass in 2 s
    times = np.concatenate([b.times for b in blocks if b.times is not None])
    assert np.all(np.diff(times) > 0)  # times run on across passes, never back
    np.testing.assert_allclose(np.diff(times), 1.0 / rate, atol=1e-6)
    # each pass starts after a hole: windows never join the file's end to its start
    passes = [b for b in blocks if b.gap_before]
    assert len(passes) == delivered // rows - (delivered % rows == 0)
    assert all((b.seq % rows) == 0 for b in passes)


def test_without_timestamps_blocks_carry_t0_and_rate_and_times_run_on(tmp_path: Path) -> None:
    """No timestamp column: the rows lie on the rate's grid, so a block carries its first
    row's time and the rate, not a per-row array; times still run on across passes and
    contiguous blocks join into one without per-row times."""
    from edge_agent.sources.runner import _coalesced

    rows, rate = 50, 100.0
    path = _write(tmp_path / "plain.csv", ["0"] * rows, SyntheticSignal(SPEC).render(0, rows))
    opts = Options(path=str(path), columns=CHANNELS, rate_hz=rate, speed=0, loop=True, block=20)
    src = ReplaySource("r", opts)
    blocks = _read_all(src, limit=9)  # 3 passes of 20 + 20 + 10 rows
    assert all(b.times is None for b in blocks)
    times = np.concatenate([[b.time_of(i) for i in range(len(b.samples))] for b in blocks])
    np.testing.assert_allclose(np.diff(times), 1.0 / rate, atol=1e-6)  # on across passes
    assert times[0] == pytest.approx(time.time(), abs=60)  # sample 0: when the replay opened
    joined = _coalesced(blocks[:3], 1 << 20, None)  # one pass, no hole inside
    assert len(joined) == 1
    assert joined[0].times is None
    assert len(joined[0].samples) == rows


def test_out_of_order_and_duplicate_times_are_counted_not_fatal(tmp_path: Path) -> None:
    t = [1_700_000_000 + i / 100 for i in range(200)]
    t[50], t[51] = t[51], t[50]  # two rows swapped
    t[120] = t[119]  # a repeated record
    stamps = [f"{x:.2f}" for x in t]
    samples = np.arange(800, dtype=np.float64).reshape(200, 4)
    path = _write(tmp_path / "rec.csv", stamps, samples)
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", speed=0))
    blocks = _read_all(src)
    times = np.concatenate([b.times for b in blocks if b.times is not None])
    assert np.all(np.diff(times) > 0)
    c = src.snapshot_counters()
    assert c["out_of_order_times"] == 1
    assert c["duplicate_times"] == 1
    assert len(times) == 199
    # the lost t=1.20 sample is a hole: the block after it is marked
    hole_at = int(np.flatnonzero(np.diff(times) > 0.015)[0]) + 1
    assert times[hole_at] == pytest.approx(1_700_000_001.21)
    assert any(b.gap_before and b.t0 == pytest.approx(times[hole_at]) for b in blocks)


def test_time_jump_and_skipped_rows_are_holes(tmp_path: Path) -> None:
    stamps = [f"{1_700_000_000 + i / 100:.2f}" for i in range(100)]
    stamps += [f"{1_700_000_060 + i / 100:.2f}" for i in range(100)]  # a minute missing
    path = _write(tmp_path / "rec.csv", stamps, np.ones((200, 4)))
    text = path.read_text().splitlines()
    text[31] = "1700000000.30,1,oops,1,1"  # text in a number column
    path.write_text("\n".join(text) + "\n")
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", speed=0, block=64))
    blocks = _read_all(src)
    assert [b.seq for b in blocks if b.gap_before] == [30, 99]
    assert src.snapshot_counters() == {"bad_rows": 1, "time_gaps": 1}


def test_cr_only_line_endings_read(tmp_path: Path) -> None:
    stamps = [f"{1_700_000_000 + i / 100:.2f}" for i in range(100)]
    samples = np.arange(400, dtype=np.float64).reshape(100, 4)
    path = _write(tmp_path / "mac.csv", stamps, samples, newline="\r")
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", speed=0))
    got = np.concatenate([b.samples for b in _read_all(src)])
    np.testing.assert_array_equal(got, samples.astype(np.float32))
    assert src.rate_hz == pytest.approx(100.0)


def test_decimal_commas_get_a_hint_and_can_be_read(tmp_path: Path) -> None:
    path = tmp_path / "eu.csv"
    path.write_text("ts;a;b\n" + "".join(f"{i};{i},5;-{i},25\n" for i in range(50)))
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", delimiter=";"))
    with pytest.raises(SourceError, match=r'decimal comma.*decimal = ","'):
        src.open()
    ok = ReplaySource(
        "r", Options(path=str(path), timestamp_column="ts", delimiter=";", decimal=",", speed=0)
    )
    got = np.concatenate([b.samples for b in _read_all(ok)])
    assert got[3].tolist() == [3.5, -3.25]


def test_decimal_comma_needs_another_delimiter() -> None:
    with pytest.raises(ValueError, match="needs another delimiter"):
        Options(path="x.csv", decimal=",")


def test_iso_times_with_offsets_and_z(tmp_path: Path) -> None:
    stamps = [
        "2024-03-31T00:59:50.000+01:00",
        "2024-03-30T23:59:50.010Z",
        "2024-03-31T01:59:50.020+02:00",
    ]
    path = _write(tmp_path / "iso.csv", stamps, np.zeros((3, 4)))
    src = ReplaySource("r", Options(path=str(path), timestamp_column="ts", speed=0))
    times = np.concatenate([b.times for b in _read_all(src) if b.times is not None])
    np.testing.assert_allclose(times, 1711843190.0 + np.array([0.0, 0.01, 0.02]), atol=1e-6)


def test_agent_events_carry_the_file_times_of_5_minute_ms_data(tmp_path: Path) -> None:
    """Through the real agent: a 5-minute-spaced recording with epoch-millisecond times;
    every anomaly event names a sample time of the file, inside an injected anomaly."""
    import json

    from tests.agentutil import read_status, run_cli

    t0_ms, step_ms = 1_700_000_000_000, 300_000
    samples = SyntheticSignal(SPEC).render(0, N)
    stamps = [str(t0_ms + i * step_ms) for i in range(N)]
    path = _write(tmp_path / "rec.csv", stamps, samples)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'device_id = "gw"\n[[streams]]\nname = "press"\nmodel = "vibration-ae"\n'
        f'[streams.source]\nkind = "replay"\npath = "{path}"\ntimestamp_column = "ts"\n'
        "speed = 0\n"
    )
    state = tmp_path / "state"
    r = run_cli("run", "--config", str(cfg), "--state-dir", str(state), timeout=120)
    assert r.returncode == 0, r.stderr
    (s,) = read_status(state)["streams"]
    assert s["rate_hz_configured"] == pytest.approx(1 / 300)
    r = run_cli("events", "--state-dir", str(state), "--json")
    assert r.returncode == 0, r.stderr
    events = [e for e in json.loads(r.stdout) if e.get("kind") == "anomaly"]
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) >= 2
    for e in events:
        row = (e["t_sample"] - t0_ms / 1000) / (step_ms / 1000)
        assert row == pytest.approx(round(row), abs=1e-6)  # exactly one of the file's times
        # the window it came from, by sample count: it ends at that very row
        w = e["window"]
        assert w["samples"] == 64
        assert w["first_sample"] + w["samples"] - 1 == round(row)
        # the window (64 rows) that decided it overlaps an injected anomaly (rows
        # 500-800, 1700-2000, 2900-) for a start; an end comes after its start
        if e["event"] == "start":
            assert any(a <= row < b + 64 for a, b in ((500, 800), (1700, 2000), (2900, N))), row
        else:
            assert e["t_end"] >= e["t_start"]
