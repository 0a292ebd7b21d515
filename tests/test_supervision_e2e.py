"""The real agent process under faults: components made to raise (EDGE_AGENT_TEST_FAULT),
a hung backend, a second agent on one state dir, damaged slot state, SIGTERM with many
streams and a backlog. Every wait polls a condition with a generous deadline."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.agentutil import MODELS, REPO, AgentProc, read_status, run_cli
from tests.mosquitto import Broker
from tests.subscriber import Subscriber

CLI = (sys.executable, "-m", "edge_agent")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stream(name: str, *, anomalies: str = "") -> str:
    return f"""
[[streams]]
name = "{name}"
variant = "int8-onnx"
source = {{ kind = "synthetic", speed = 1.0{anomalies} }}
"""


def _config(
    path: Path, streams: str, *, mqtt: str = "enabled = false", health: str = "", extra: str = ""
) -> Path:
    path.write_text(
        f"""
device_id = "gw-sup"
models_dir = "{MODELS}"
{extra}
[mqtt]
{mqtt}

[health]
watchdog = true
{health}

[logging]
format = "plain"

{streams}
"""
    )
    return path


def _component(st: dict[str, Any], name: str) -> dict[str, Any]:
    comps: dict[str, dict[str, Any]] = {c["name"]: c for c in st["supervisor"]["components"]}
    return comps[name]


def _status_cli(state: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("status", "--state-dir", str(state), "--json", timeout=30)


def _trusted_root(d: Path) -> Path:
    """A real signed OTA root (two keys, threshold 2), made with `edge-ota`."""

    def ota_cli(*args: str) -> None:
        p = subprocess.run(
            [sys.executable, "-m", "ota", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            check=False,
        )
        assert p.returncode == 0, p.stderr

    keys, root = d / "keys", d / "root.json"
    for name in ("alice", "bob"):
        ota_cli("keygen", "--out", str(keys), "--name", name)
    pubs = [a for n in ("alice", "bob") for a in ("--key", str(keys / f"{n}.pub"))]
    privs = [a for n in ("alice", "bob") for a in ("--key", str(keys / f"{n}.key"))]
    ota_cli("root", "init", *pubs, "--threshold", "2", "--expires", "30d", "--out", str(root))
    ota_cli("root", "sign", str(root), *privs)
    return root


def test_each_supervised_component_that_raises_is_restarted_and_shown(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    metrics = f"[metrics]\nenabled = true\nport = {_free_port()}\n"
    ota = f'[ota]\nroot_file = "{_trusted_root(tmp_path / "ota")}"\n'  # so an updater runs
    cfg = _config(
        tmp_path / "a.toml",
        _stream("press"),
        mqtt=f"port = {_free_port()}\nreconnect_max_s = 1",  # a broker that is not there
        extra=metrics + ota,
    )
    faults = "stream-press,2;reporting,1;metrics,1;updater,1;tick,2"
    a = AgentProc(cfg, tmp_path / "state", tmp_path / "a.log", {"EDGE_AGENT_TEST_FAULT": faults})
    agents.append(a)
    want = {"stream-press": 2, "reporting": 1, "metrics": 1, "updater": 1, "tick": 2}
    st = a.until(
        lambda s: all(_component(s, n)["restarts"] >= k for n, k in want.items()) and s,
        60,
        "every component restarted as often as it was made to fail",
    )
    for name in want:
        c = _component(st, name)
        assert "InjectedFaultError" in c["last_error"], c
    # restarted, and working again: the stream scores, every component runs
    w0 = st["windows_total"]
    st = a.until(
        lambda s: (
            s["windows_total"] > w0
            and all(c["state"] == "running" for c in s["supervisor"]["components"])
            and s
        ),
        60,
        "all components running again and windows scored after the restarts",
    )
    res = _status_cli(a.state)
    notes = " ".join(json.loads(res.stdout)["notes"])
    assert "stream-press restarted 2 time(s)" in notes, res.stdout
    assert a.proc.poll() is None
    assert a.stop() == 0, a.text()


def test_a_component_past_its_restart_budget_is_degraded_and_the_agent_runs_on(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    cfg = _config(
        tmp_path / "a.toml",
        _stream("press") + _stream("line2"),
        health="restart_budget = 2\nrestart_window_s = 600",
    )
    env = {"EDGE_AGENT_TEST_FAULT": "stream-press,1000"}
    a = AgentProc(cfg, tmp_path / "state", tmp_path / "a.log", env)
    agents.append(a)
    st = a.until(
        lambda s: _component(s, "stream-press")["state"] == "failed" and s,
        90,
        "stream-press failed for good",
    )
    press = next(s for s in st["streams"] if s["name"] == "press")
    assert press["error"].startswith("scoring stopped"), press
    # the failed stream's source does not keep running behind it
    a.until(
        lambda s: (
            next(x for x in s["streams"] if x["name"] == "press")["source_state"] == "stopped"
        ),
        30,
        "the given-up stream's source stopped",
    )
    w0 = next(x for x in st["streams"] if x["name"] == "line2")["windows"]
    a.until(
        lambda s: next(x for x in s["streams"] if x["name"] == "line2")["windows"] > w0,
        60,
        "the other stream keeps scoring",
    )
    res = _status_cli(a.state)
    js = json.loads(res.stdout)
    assert js["verdict"] == "DEGRADED", res.stdout
    reasons = js["reasons"]
    assert any(r.startswith("stream-press failed past its restart budget") for r in reasons)
    assert any("next try in" in r for r in reasons), reasons  # tried again later
    assert a.proc.poll() is None  # DEGRADED, not exit
    # A requested stop (systemctl stop) exits 0 so the unit ends inactive, not failed;
    # the failure stays on record in the final status and the stop summary.
    assert a.stop() == 0, a.text()
    assert "all sources finished" not in a.text()
    assert "error: scoring stopped: restart budget spent" in a.text()
    final = read_status(a.state)
    assert final["running"] is False, final
    press = next(s for s in final["streams"] if s["name"] == "press")
    assert press["error"].startswith("scoring stopped"), press


def test_a_hung_backend_call_stops_the_watchdog_while_the_process_lives(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    from tests.notify_socket import NotifySocket

    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        cfg = _config(tmp_path / "a.toml", _stream("press"), health="stall_after_s = 2")
        env = {
            "NOTIFY_SOCKET": sock.address,
            "WATCHDOG_USEC": "5000000",
            # the scoring loop's 60th turn blocks: stands for an inference that never returns
            "EDGE_AGENT_TEST_FAULT": "hang:stream-press,60",
        }
        a = AgentProc(cfg, tmp_path / "state", tmp_path / "a.log", env)
        agents.append(a)
        sock.wait_for("WATCHDOG", 60)
        st = a.until(lambda s: not s["health"]["live"] and s, 60, "the hang seen in status")
        assert any("stream-press has not turned" in h for h in st["health"]["verdict_hints"])
        sock.drain()
        t_seen = time.monotonic()
        while time.monotonic() - t_seen < 6.0:  # longer than WATCHDOG_USEC
            sock.drain(0.1)
        late = [t for t, m in sock.messages if "WATCHDOG" in m and t > t_seen]
        assert not late, "WATCHDOG=1 went on while a loop was hung"
        assert a.proc.poll() is None
        res = _status_cli(a.state)
        assert json.loads(res.stdout)["verdict"] == "DOWN", res.stdout
        assert a.stop() == 0, a.text()  # the hung loop is abandoned at the stop deadline
        assert "withholding watchdog: hung: stream-press" in a.text()
    finally:
        sock.close()


def test_a_second_agent_on_one_state_dir_is_refused_naming_the_first(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    cfg = _config(tmp_path / "a.toml", _stream("press"))
    a = AgentProc(cfg, tmp_path / "state", tmp_path / "a.log", {})
    agents.append(a)
    a.until(lambda s: s["ready"], 60, "first agent ready")
    res = run_cli("run", "--config", str(cfg), "--state-dir", str(a.state), timeout=120)
    assert res.returncode == 1, res.stderr
    assert f"in use by another edge-agent (pid {a.proc.pid})" in res.stderr, res.stderr
    assert a.proc.poll() is None
    assert read_status(a.state)["pid"] == a.proc.pid  # the second wrote nothing over it
    assert a.stop() == 0


def test_damaged_slot_state_serves_the_bundled_model_and_says_so(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "slots.json").write_text('{"phase": "idle", "active": "a", "committ')  # torn
    cfg = _config(tmp_path / "a.toml", _stream("press"))
    res = run_cli(
        "run", "--config", str(cfg), "--state-dir", str(state), "--max-windows", "20", timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    st = read_status(state)
    assert st["windows_total"] >= 20
    assert st["ota"]["model_source"]["press"] == "bundled"
    notes = [e["message"] for e in st["errors"] if e["where"] == "ota"]
    assert any(n.startswith("slot state damaged") for n in notes), st["errors"]
    assert (state / "slots.json.damaged").exists()


def _events_of(msgs: list[Any], streams: set[str]) -> set[tuple[str, str, float]]:
    out = set()
    for m in msgs:
        body = m.json()
        if body.get("stream") in streams and body.get("event") in ("start", "end"):
            out.add((body["stream"], body["event"], float(body["t_start"])))
    return out


def test_sigterm_with_8_streams_and_a_backlog_stops_in_time_and_loses_nothing(
    tmp_path: Path, agents: list[AgentProc], broker: Broker
) -> None:
    names = [f"line{i}" for i in range(8)]
    often = ", first_anomaly_s = 1, anomaly_every_s = 4, anomaly_duration_s = 1.5"
    streams = "".join(_stream(n, anomalies=often) for n in names)
    dead = f"port = {_free_port()}\nreconnect_max_s = 1"  # broker away: a backlog builds
    cfg = _config(tmp_path / "a.toml", streams, mqtt=dead)
    state = tmp_path / "state"
    a = AgentProc(cfg, state, tmp_path / "a.log", {})
    agents.append(a)
    a.until(
        lambda s: s["events_total"] >= 8 and s["outbox"]["depth"] > 0,
        120,
        "anomaly events waiting in the outbox",
    )
    t0 = time.monotonic()
    rc = a.stop(timeout=60)
    took = time.monotonic() - t0
    assert rc == 0, a.text()
    assert took < 20.0, f"SIGTERM took {took:.1f} s"
    final = read_status(state)
    logged = final["events_total"]
    assert logged >= 8
    # The next start (broker up now) delivers every one of them.
    sub = Subscriber("127.0.0.1", broker.port, "edge/gw-sup/events")
    try:
        cfg2 = _config(
            tmp_path / "b.toml", _stream("after"), mqtt=f"port = {broker.port}", extra=""
        )
        b = AgentProc(cfg2, state, tmp_path / "b.log", {})
        agents.append(b)
        ok = sub.wait_for(lambda msgs: len(_events_of(msgs, set(names))) >= logged, timeout=120)
        got = _events_of(sub.messages, set(names))
        assert ok, f"{len(got)} of {logged} anomaly events delivered after the restart"
        assert b.stop() == 0
    finally:
        sub.close()
    (tmp_path / "shutdown_s.txt").write_text(f"{took:.2f}\n")


def test_a_tick_that_always_fails_still_sends_ready_and_watchdog(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    from tests.notify_socket import NotifySocket

    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        cfg = _config(tmp_path / "a.toml", _stream("press"))
        env = {
            "NOTIFY_SOCKET": sock.address,
            "WATCHDOG_USEC": "2000000",
            "EDGE_AGENT_TEST_FAULT": "tick,100000",  # every tick raises
        }
        a = AgentProc(cfg, tmp_path / "state", tmp_path / "a.log", env)
        agents.append(a)
        sock.wait_for("READY", 60)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.0:
            sock.drain(0.1)
        pings = [t for t, m in sock.messages if "WATCHDOG" in m and t > t0]
        assert len(pings) >= 3, sock.messages[-5:]
        assert a.proc.poll() is None
        assert a.stop() == 0, a.text()
        assert "status tick failed" in a.text()
        final = read_status(a.state)  # the final status is written at the stop
        tick = _component(final, "tick")
        assert tick["restarts"] >= 3
        assert "InjectedFaultError" in tick["last_error"]
    finally:
        sock.close()
