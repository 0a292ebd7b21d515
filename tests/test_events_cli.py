"""`edge-agent events` and the local event history it reads (issue 16)."""

from __future__ import annotations

import json

import pytest

from edge_agent.commands.events import parse_since
from edge_agent.errors import ConfigError
from edge_agent.reporting.history import HISTORY_FILE, EventHistory, read_history
from tests.agentutil import run_cli


def _anomaly(stream: str, event: str, t: float) -> dict[str, object]:
    return {
        "kind": "anomaly",
        "event": event,
        "stream": stream,
        "t_sample": t,
        "t_start": t,
        "score": 9.5,
        "peak_score": 12.0,
        "threshold": 4.0,
        "model": "m-int8-onnx",
        "model_version": 3,
    }


def test_history_keeps_the_newest_events_within_its_bound(tmp_path):
    h = EventHistory(tmp_path, max_bytes=2000)
    for i in range(100):
        h.record(_anomaly("s", "start", float(i)))
    h.close()  # written by the history's thread: close() writes what is queued
    kept = [r["t_sample"] for r in read_history(tmp_path)]
    assert kept == sorted(kept)
    assert kept[-1] == 99.0
    assert 0 < len(kept) < 100
    files = sorted(tmp_path.glob(f"{HISTORY_FILE}*"))
    assert sum(f.stat().st_size for f in files) <= 2 * 2000


def test_a_torn_last_line_does_not_hide_the_events_before_it(tmp_path):
    h = EventHistory(tmp_path)
    h.record(_anomaly("s", "start", 1.0))
    h.close()
    with (tmp_path / HISTORY_FILE).open("a") as f:
        f.write('{"kind": "anomaly", "ev')  # power lost mid-write
    assert [r["t_sample"] for r in read_history(tmp_path)] == [1.0]


def test_an_unwritable_state_dir_never_raises_into_the_stream(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    EventHistory(blocker / "state").record(_anomaly("s", "start", 1.0))  # logged, not raised


def test_since_accepts_ages_epoch_and_iso_and_names_what_it_wants():
    assert parse_since("30m", now=10_000.0) == 10_000.0 - 1800
    assert parse_since("2d", now=200_000.0) == 200_000.0 - 2 * 86400
    assert parse_since("1700000000", now=0.0) == 1_700_000_000.0
    assert parse_since("2026-03-01T12:00:00+00:00", now=0.0) == 1_772_366_400.0
    with pytest.raises(ConfigError, match="30m, 12h, 7d"):
        parse_since("yesterday", now=0.0)


def test_events_lists_filters_and_exports(tmp_path):
    h = EventHistory(tmp_path)
    h.record(_anomaly("pump", "start", 1_000.0))
    h.record({**_anomaly("pump", "end", 1_060.0), "t_start": 1_000.0, "duration_s": 60.0})
    h.record(_anomaly("oven", "start", 2_000.0))
    h.close()
    r = run_cli("events", "--state-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    assert "1970-01-01T00:16:40.000+00:00" in lines[0]
    assert "peak score 12" in lines[1]
    assert "after 60.0 s" in lines[1]
    r = run_cli("events", "--state-dir", str(tmp_path), "--stream", "pump", "--json")
    assert [e["t_sample"] for e in json.loads(r.stdout)] == [1_000.0, 1_060.0]
    r = run_cli("events", "--state-dir", str(tmp_path), "--since", "1500", "--csv")
    rows = r.stdout.splitlines()
    assert rows[0].startswith("t_sample,time_utc,kind,event,stream")
    assert len(rows) == 2
    assert rows[1].startswith("2000.0,")


def test_events_on_a_missing_state_dir_fails_clearly(tmp_path):
    r = run_cli("events", "--state-dir", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert "no such state directory" in r.stderr
