"""`edge-agent status`: verdict, text and exit code on a running, stopped, crashed and
never-started agent, through the real CLI reading a real status file."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.fsutil import atomic_write_json
from edge_agent.service.status import Snapshot, Verdict, assess, fmt_duration, summary_line
from edge_agent.service.status_render import render_text

ROOT = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "v": 1,
    "pid": 0,
    "running": True,
    "ready": True,
    "agent_version": "0.1.0",
    "device_id": "gw-01",
    "profile": {"name": "x86-generic", "reason": "CPU architecture x86_64"},
    "health": {"live": True, "ready": True, "verdict_hints": []},
    "streams": [
        {
            "name": "demo",
            "source_kind": "synthetic",
            "source_state": "running",
            "source_error": "",
            "rate_hz_configured": 100.0,
            "rate_hz_measured": 99.8,
            "samples": 32000,
            "windows": 2000,
            "skipped_windows": 0,
            "dropped_blocks": 0,
            "last_score": 0.12,
            "threshold": 0.9,
            "alarm_open": False,
            "alarms": 5,
            "events": 10,
            "restarts": 0,
            "error": "",
            "model": {
                "name": "vibration-ae-int8-onnx",
                "version": 1,
                "backend": "onnx",
                "precision": "int8",
                "providers": ["CPUExecutionProvider"],
                "fallback": "",
            },
            "sensor_health": {"active": []},
            "counters": {},
        }
    ],
    "mqtt": {
        "enabled": True,
        "connected": True,
        "since": None,
        "broker": "127.0.0.1:1883",
        "last_publish": None,
        "last_error": "",
        "refused": 0,
        "acl_denied": 0,
        "reconnects": 0,
    },
    "outbox": {"depth": 12, "bytes": 4096, "oldest_age_s": 30.5, "drops": {"telemetry": 0}},
    "ota": {"state": "idle", "active_slot": "a", "active_version": 1, "last_result": ""},
    "errors": [],
}


def state(now: float, **changes: Any) -> dict[str, Any]:
    st = copy.deepcopy(BASE)
    st.update(written_at=now - 0.5, started_at=now - 3725.0, pid=os.getpid())
    st.update(changes)
    return st


def status_cli(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "status", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_fits(text: str, width: int = 80) -> None:
    for line in text.splitlines():
        assert len(line) <= width, f"{len(line)} columns: {line!r}"


# -- through the real CLI -------------------------------------------------------------


def test_running_agent_is_ok(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "status.json", state(time.time()))
    t0 = time.monotonic()
    r = status_cli("--state-dir", str(tmp_path))
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("edge-agent status: OK")
    assert lines[0].endswith("gw-01  x86-generic")
    assert "STALE" not in r.stdout
    assert f"pid {os.getpid()}, up 1h02m, v0.1.0" in r.stdout
    row = next(x for x in lines if x.startswith("  demo "))
    assert row.split() == ["demo", "running", "99.8/100", "2000", "0.12/0.9", "5", "0"]
    assert "model vibration-ae-int8-onnx v1 onnx int8 [CPUExecutionProvider]" in r.stdout
    assert "mqtt     connected to 127.0.0.1:1883" in r.stdout
    assert "outbox   12 queued (4.0 KiB), oldest 30 s; drops none" in r.stdout
    assert "ota      idle; active slot a v1" in r.stdout
    assert_fits(r.stdout)
    assert elapsed < 2.0  # incl. interpreter start; the command itself reads one file


def test_stopped_agent_is_down_and_stale(tmp_path: Path) -> None:
    now = time.time()
    atomic_write_json(tmp_path / "status.json", state(now - 125, running=False))
    r = status_cli("--state-dir", str(tmp_path))
    assert r.returncode == 3
    head, reason = r.stdout.splitlines()[:2]
    assert head.startswith("edge-agent status: DOWN (STALE: last known state)")
    assert reason.startswith(" ! agent stopped (clean exit) 2m0")
    assert "written " in r.stdout  # the wall-clock time of the last known state
    assert "  demo " in r.stdout  # last known streams still shown
    assert_fits(r.stdout)


def test_crashed_agent_pid_gone_is_down(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    atomic_write_json(tmp_path / "status.json", state(time.time(), pid=dead.pid))
    r = status_cli("--state-dir", str(tmp_path), "--json")
    assert r.returncode == 3
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "DOWN"
    assert doc["stale"] is True
    assert doc["reasons"][0].startswith(f"agent not running: pid {dead.pid} is gone")
    assert doc["state"]["device_id"] == "gw-01"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temporary directory with a short path: the tests below look for the whole path
    on an 80-column line, and pytest's own (longer under xdist) would be cut to fit."""
    d = Path(tempfile.mkdtemp(prefix="st-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_empty_state_dir_never_ran_here(short_dir: Path) -> None:
    tmp_path = short_dir
    r = status_cli("--state-dir", str(tmp_path))
    assert r.returncode == 3
    lines = r.stdout.splitlines()
    assert lines[0] == "edge-agent status: DOWN"
    assert lines[1].startswith(" ! never ran here: no status.json in")
    assert f"state    {tmp_path}" in lines
    assert_fits(r.stdout)
    j = status_cli("--state-dir", str(tmp_path), "--json")
    assert j.returncode == 3
    assert json.loads(j.stdout)["state"] is None


def test_degraded_exit_code_and_reasons(tmp_path: Path) -> None:
    now = time.time()
    st = state(now)
    st["mqtt"].update(connected=False, since=now - 130, last_error="connection refused")
    atomic_write_json(tmp_path / "status.json", st)
    r = status_cli("--state-dir", str(tmp_path))
    assert r.returncode == 1
    assert r.stdout.startswith("edge-agent status: DEGRADED")
    assert " ! MQTT not connected to 127.0.0.1:1883 for 2m1" in r.stdout
    assert "mqtt     NOT CONNECTED to 127.0.0.1:1883" in r.stdout


def test_state_dir_comes_from_the_config(short_dir: Path) -> None:
    tmp_path = short_dir
    sd = tmp_path / "state"
    sd.mkdir()
    atomic_write_json(sd / "status.json", state(time.time()))
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'device_id = "gw-01"\nstate_dir = "{sd}"\n')
    r = status_cli("--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"state    {sd}" in r.stdout


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    r = status_cli("--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2
    assert "missing.toml: no such file" in r.stderr
    r = status_cli("--state-dir", str(tmp_path), "--watch", "0")
    assert r.returncode == 2
    assert "--watch" in r.stderr


def test_watch_refreshes_in_place_until_ctrl_c(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "status.json", state(time.time()))
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent",
            "status",
            "--state-dir",
            str(tmp_path),
            "--watch",
            "0.1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    seen = ""
    deadline = time.monotonic() + 10
    while seen.count("\x1b[H\x1b[2J") < 3 and time.monotonic() < deadline:
        seen += p.stdout.readline()
    p.send_signal(signal.SIGINT)
    out = seen + p.communicate(timeout=10)[0]
    assert out.count("\x1b[H\x1b[2J") >= 3
    assert out.count("edge-agent status: OK") >= 3
    assert p.returncode == 0  # the last verdict shown was OK
    assert "Ctrl-C to quit" in out


# -- the pure verdict and the renderer -----------------------------------------------


def snap(st: dict[str, Any] | None, alive: bool | None = True) -> Snapshot:
    return Snapshot("/var/lib/edge-agent", st is not None, st, pid_alive=alive)


def test_stale_file_with_live_pid_is_not_responding() -> None:
    now = 1_000_000.0
    a = assess(snap(state(now, written_at=now - 60)), now)
    assert a.verdict is Verdict.DOWN
    assert a.stale
    assert a.reasons == ("agent not responding: status last written 1m00s ago",)
    assert a.exit_code == 3


def test_not_live_is_down_even_while_the_process_runs() -> None:
    now = 1_000_000.0
    a = assess(snap(state(now, health={"live": False, "ready": True})), now)
    assert a.verdict is Verdict.DOWN
    assert not a.stale
    assert a.reasons[0].startswith("pipeline stalled")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"source_state": "reconnecting", "source_error": "port gone"},
            "source reconnecting: port gone",
        ),
        ({"source_state": "failed"}, "source failed"),
        ({"rate_hz_measured": 20.0}, "20 Hz, configured 100 Hz"),
        ({"error": "RuntimeError: boom"}, "scoring stopped: RuntimeError: boom"),
        (
            {"model": {**BASE["streams"][0]["model"], "fallback": "CUDA unavailable"}},
            "model fallback",
        ),
        ({"sensor_health": {"active": ["flatline on ch0"]}}, "sensor: flatline on ch0"),
    ],
)
def test_stream_problems_degrade(change: dict[str, Any], reason: str) -> None:
    now = 1_000_000.0
    st = state(now)
    st["streams"][0].update(change)
    a = assess(snap(st), now)
    assert a.verdict is Verdict.DEGRADED
    assert a.exit_code == 1
    assert any(reason in r for r in a.reasons), a.reasons


def test_finished_replay_and_past_drops_are_notes_not_problems() -> None:
    now = 1_000_000.0
    st = state(now)
    st["streams"][0].update(source_state="finished", dropped_blocks=3)
    st["outbox"]["drops"] = {"telemetry": 4}
    st["errors"] = [{"ts": now - 5, "where": "source demo", "message": "x"}]
    a = assess(snap(st), now)
    assert a.verdict is Verdict.OK
    assert set(a.notes) == {
        "stream demo: source finished (end of data)",
        "stream demo: 3 blocks dropped (pipeline behind)",
        "outbox dropped 4 telemetry",
        "1 error(s) in the last minute",
    }


def test_unreadable_and_foreign_files_are_down() -> None:
    a = assess(Snapshot("/x", True, None, error="not valid JSON: ..."), 0.0)
    assert (a.verdict, a.reasons) == (
        Verdict.DOWN,
        ("status.json unreadable: not valid JSON: ...",),
    )
    a = assess(snap({"v": 2}), 0.0)
    assert a.reasons == ("status.json has format v=2; this edge-agent reads v=1",)


def test_text_fits_80_columns_with_long_names_and_messages() -> None:
    now = 1_000_000.0
    st = state(
        now, device_id="gateway-" + "x" * 60, profile={"name": "p" * 50, "reason": "r" * 200}
    )
    s0 = st["streams"][0]
    s0.update(
        name="spindle-bearing-vibration-left-" * 3,
        source_state="reconnecting",
        source_error="could not open port /dev/serial/by-id/" + "y" * 120,
        windows=123_456_789_012,
        dropped_blocks=99_999_999,
        rate_hz_measured=123456.789,
        rate_hz_configured=250000.0,
        last_score=12345.6789,
        threshold=0.000123,
        alarm_open=True,
        alarms=1_000_000,
    )
    st["streams"].append(copy.deepcopy(s0) | {"name": "b"})
    st["mqtt"].update(connected=False, since=now - 9e5, last_error="e" * 300, broker="b" * 90)
    st["errors"] = [{"ts": now - i, "where": "w" * 40, "message": "m" * 200} for i in range(5)]
    a = assess(snap(st), now)
    text = render_text(snap(st), a, now)
    assert_fits(text)
    assert text.startswith("edge-agent status: DEGRADED")
    assert "  spindle-bea... reconnecting" in text
    assert "123.5G" in text  # windows compacted, not cut
    for width in (60, 100):
        assert_fits(render_text(snap(st), a, now, width=width), width)


def test_summary_line_for_systemd_status() -> None:
    now = 1_000_000.0
    assert summary_line(state(now), now) == (
        "OK: 1 stream(s), 2000 windows, 5 alarms, mqtt up, outbox 12"
    )
    st = state(now)
    st["mqtt"]["connected"] = False
    assert summary_line(st, now).startswith("DEGRADED: MQTT not connected to 127.0.0.1:1883;")


def test_durations_read_well() -> None:
    assert [fmt_duration(s) for s in (0.44, 42, 312, 3725, 12 * 86400 + 3 * 3600)] == [
        "0.4 s",
        "42 s",
        "5m12s",
        "1h02m",
        "12d03h",
    ]


def _stream_row(text: str, name: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith(f"  {name} "))


def test_score_and_threshold_both_fit_with_three_significant_digits() -> None:
    # the values of a real demo run, which used to print "0.0339/0..."
    now = 1_000_000.0
    st = state(now)
    st["streams"][0].update(last_score=0.03391443198902789, threshold=0.05605)
    st["streams"].append(
        copy.deepcopy(st["streams"][0])
        | {"name": "tiny", "last_score": 0.000123456, "threshold": 123456.789}
    )
    text = render_text(snap(st), assess(snap(st), now), now)
    assert_fits(text)
    assert "0.0339/0.0561" in _stream_row(text, "demo")
    assert "1.2e-4/123457" in _stream_row(text, "tiny")
    assert "..." not in _stream_row(text, "demo")


@pytest.mark.parametrize(
    ("dropped", "skipped", "cell", "detail"),
    [
        (0, 0, " 0", None),
        (7, 0, " 7q", "drops: 7 blocks dropped, queue full (q)"),
        (0, 3, " 3w", "drops: 3 windows withheld, bad samples (w)"),
        (
            7,
            3,
            " 7q+3w",
            "drops: 7 blocks dropped, queue full (q); 3 windows withheld, bad samples (w)",
        ),
    ],
)
def test_drops_keep_queue_drops_and_withheld_windows_apart(
    dropped: int, skipped: int, cell: str, detail: str | None
) -> None:
    now = 1_000_000.0
    st = state(now)
    st["streams"][0].update(dropped_blocks=dropped, skipped_windows=skipped)
    text = render_text(snap(st), assess(snap(st), now), now)
    assert_fits(text)
    assert _stream_row(text, "demo").endswith(cell)
    drop_lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("drops:")]
    assert drop_lines == ([detail] if detail else [])


def test_active_sensor_conditions_are_shown_under_their_stream() -> None:
    now = 1_000_000.0
    st = state(now)
    st["streams"][0]["sensor_health"] = {"active": ["stalled", "range:current"]}
    st["streams"].append(copy.deepcopy(BASE["streams"][0]) | {"name": "quiet"})
    text = render_text(snap(st), assess(snap(st), now), now)
    assert_fits(text)
    lines = text.splitlines()
    demo, quiet = lines.index(_stream_row(text, "demo")), lines.index(_stream_row(text, "quiet"))
    assert "    sensor: stalled, range:current" in lines[demo:quiet]
    assert not any(ln.startswith("    sensor:") for ln in lines[quiet:])


def test_ota_line_says_the_bundled_model_serves_and_why_updates_are_off() -> None:
    now = 1_000_000.0
    st = state(now)
    st["ota"] = {
        "enabled": False,
        "state": "off",
        "active_slot": None,
        "active_version": None,
        "note": "no update channel configured (ota.image_url, ...): updates are not accepted",
    }
    text = render_text(snap(st), assess(snap(st), now), now)
    assert "ota      off; no OTA slot: the bundled model serves" in text
    assert "         no update channel configured (ota.image_url, ...): updates are not" in text
    assert "slot ?" not in text
    assert_fits(text)


def test_status_command_does_not_load_numpy_or_runtimes() -> None:
    """The technician's first command must answer at once (0.13 s here, 0.30 s when
    the config parser and `calibrate` pulled numpy into every command)."""
    import subprocess
    import sys

    code = (
        "import sys; from edge_agent.cli import main\n"
        "try:\n    main(['status', '--state-dir', sys.argv[1]])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('numpy', 'onnxruntime', 'paho') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "/nonexistent-state-dir"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def _components(*comps: dict[str, Any]) -> dict[str, Any]:
    base = {"restarts": 0, "last_error": "", "last_error_at": None, "hung": False}
    return {"components": [{**base, **c} for c in comps]}


def test_a_component_past_its_budget_or_restarting_is_degraded_a_past_restart_a_note() -> None:
    now = 1_000_000.0
    sup = _components(
        {"name": "stream-press", "state": "failed", "restarts": 5, "last_error": "E: x"},
        {"name": "reporting", "state": "restarting", "restarts": 1, "last_error": "E: y"},
        {"name": "metrics", "state": "running", "restarts": 2, "last_error": "E: z"},
        {"name": "tick", "state": "running"},
    )
    a = assess(snap(state(now, supervisor=sup)), now)
    assert a.verdict is Verdict.DEGRADED
    assert "stream-press failed, not restarted again (5 restarts): E: x" in a.reasons
    assert "reporting restarting (restart 2): E: y" in a.reasons
    assert "metrics restarted 2 time(s): E: z" in a.notes
    assert not [r for r in a.reasons if "tick" in r or "metrics" in r]


def test_a_stop_on_an_error_is_not_called_a_clean_exit() -> None:
    now = 1_000_000.0
    st = state(now, running=False, stop_reason="error: OSError: disk gone")
    a = assess(snap(st), now)
    assert a.verdict is Verdict.DOWN
    assert a.reasons[0].startswith("agent stopped on an error: OSError: disk gone")
    assert "clean exit" not in a.reasons[0]
