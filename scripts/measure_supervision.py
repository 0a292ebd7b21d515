#!/usr/bin/env python3
"""Short measurement for docs/benchmarks.md: time from a fault to its verdict in status,
and SIGTERM time with 8 streams and an outbox backlog (broker away, and broker
reachable so the drain grace is used). Real agent processes; the broker measurements
run a real mosquitto (tests/mosquitto.py).

    .venv/bin/python scripts/measure_supervision.py            # all
    .venv/bin/python scripts/measure_supervision.py broker_killed broker_silent

Fault -> verdict latencies use the agent's own clock: the moment the fault happened
(from status fields or the time this script caused it) and the `written_at` of the
first status.json showing the verdict. About 90 s in all.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.service.status import Snapshot, assess  # noqa: E402
from tests.mosquitto import Broker  # noqa: E402
from tests.subscriber import Subscriber  # noqa: E402

MODELS = REPO / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(work: Path, streams: str, *, mqtt: str = "enabled = false", health: str = "") -> Path:
    p = work / "agent.toml"
    p.write_text(
        f'device_id = "gw-m"\nmodels_dir = "{MODELS}"\n[mqtt]\n{mqtt}\n'
        f'[health]\n{health}\n[logging]\nformat = "plain"\n{streams}'
    )
    return p


def synthetic(name: str) -> str:
    return (
        f'[[streams]]\nname = "{name}"\nvariant = "int8-onnx"\n'
        'source = { kind = "synthetic", speed = 1.0, first_anomaly_s = 1, '
        "anomaly_every_s = 4 }\n"
    )


def start(work: Path, cfg: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    full.update(env or {})
    log = (work / "agent.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent",
            "run",
            "--config",
            str(cfg),
            "--state-dir",
            str(work / "state"),
        ],
        cwd=REPO,
        env=full,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def status(work: Path) -> dict[str, Any] | None:
    try:
        st: dict[str, Any] = json.loads((work / "state" / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return st


def first(work: Path, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(work)
        if st is not None and pred(st):
            return st
        time.sleep(0.02)
    raise SystemExit(f"not within {timeout} s in {work}")


def verdict(st: dict[str, Any]) -> str:
    return assess(Snapshot("", True, st, pid_alive=True), st["written_at"]).verdict.value


def stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGTERM)
    p.wait(60)


def crash_past_budget(work: Path) -> str:
    cfg = config(work, synthetic("press"), health="restart_budget = 2")
    p = start(work, cfg, {"EDGE_AGENT_TEST_FAULT": "stream-press,1000"})
    try:
        st = first(work, lambda s: any(c["last_error"] for c in s["supervisor"]["components"]), 60)
        t_fault = min(c["last_error_at"] for c in st["supervisor"]["components"] if c["last_error"])
        deg = first(work, lambda s: verdict(s) == "DEGRADED", 60)
        failed = first(
            work,
            lambda s: any(c["state"] == "failed" for c in s["supervisor"]["components"]),
            60,
        )
    finally:
        stop(p)
    return (
        f"stream loop raises: DEGRADED {deg['written_at'] - t_fault:.2f} s after the first "
        f"error; failed for good (budget 2 spent) {failed['written_at'] - t_fault:.1f} s after"
    )


def hung_loop(work: Path) -> str:
    cfg = config(work, synthetic("press"), health="stall_after_s = 2")
    p = start(work, cfg, {"EDGE_AGENT_TEST_FAULT": "hang:stream-press,40"})
    try:
        st = first(work, lambda s: not s["health"]["live"], 90)
        age = next(c["heartbeat_age_s"] for c in st["supervisor"]["components"] if c["hung"])
    finally:
        stop(p)
    return f"stream loop hangs: DOWN (WATCHDOG=1 withheld) {age:.2f} s after its last turn"


def silent_sensor(work: Path) -> str:
    master, slave = os.openpty()
    port = work / "tty"
    port.symlink_to(os.ttyname(slave))
    stream = (
        f'[[streams]]\nname = "press"\nvariant = "int8-onnx"\n[streams.source]\n'
        f'kind = "serial"\nport = "{port}"\nformat = "csv"\nrate_hz = 100\n'
        f'channels = ["vib_x", "vib_y", "vib_z", "current"]\n'
    )
    p = start(work, config(work, stream))
    flowing = threading.Event()
    flowing.set()
    done = threading.Event()

    def write() -> None:
        while not done.is_set():
            if flowing.is_set():
                os.write(master, b"".join(b"0.1,0.2,0.1,5.0\n" for _ in range(5)))
            time.sleep(0.05)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    try:
        first(work, lambda s: s["windows_total"] > 10, 60)
        flowing.clear()
        t_silent = time.time()
        st = first(work, lambda s: verdict(s) == "DEGRADED", 60)
        why = assess(Snapshot("", True, st, pid_alive=True), st["written_at"]).reasons[0]
    finally:
        done.set()
        stop(p)
        os.close(master)
        os.close(slave)
    return f"sensor goes silent: DEGRADED {st['written_at'] - t_silent:.1f} s later ({why})"


def outbox_locked(work: Path) -> str:
    p = start(work, config(work, synthetic("press")))
    try:
        first(work, lambda s: s["ready"] and s["windows_total"] > 0, 60)
        db = sqlite3.connect(work / "state" / "outbox.db", timeout=30, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        t_lock = time.time()
        st = first(work, lambda s: verdict(s) == "DEGRADED", 60)
        db.execute("COMMIT")
        db.close()
    finally:
        stop(p)
    return f"outbox locked by another process: DEGRADED {st['written_at'] - t_lock:.1f} s later"


def shutdown_8_streams(work: Path) -> str:
    streams = "".join(synthetic(f"line{i}") for i in range(8))
    p = start(work, config(work, streams, mqtt=f"port = {free_port()}"))
    try:
        st = first(work, lambda s: s["events_total"] >= 8 and s["outbox"]["depth"] > 0, 120)
    finally:
        t0 = time.monotonic()
        stop(p)
        took = time.monotonic() - t0
    return (
        f"SIGTERM, 8 streams, {st['outbox']['depth']} records in the outbox (broker away): "
        f"exit {p.returncode} after {took:.2f} s"
    )


def mqtt_to(broker: Broker, extra: str = "") -> str:
    return (
        f'host = "{broker.host}"\nport = {broker.port}\ntelemetry_interval_s = 1\n'
        f"reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n{extra}"
    )


def fast_synthetic(name: str, speed: float) -> str:
    return (
        f'[[streams]]\nname = "{name}"\nvariant = "int8-onnx"\n'
        f'source = {{ kind = "synthetic", speed = {speed}, first_anomaly_s = 1, '
        "anomaly_every_s = 3, anomaly_duration_s = 1 }\n"
    )


def broker_killed(work: Path) -> str:
    broker = Broker(work / "broker")
    broker.start()
    p = start(work, config(work, synthetic("press"), mqtt=mqtt_to(broker)))
    try:
        first(work, lambda s: s["mqtt"]["connected"] and verdict(s) == "OK", 60)
        assert broker._proc is not None
        broker._proc.kill()  # SIGKILL: no DISCONNECT, the socket just closes
        t_kill = time.time()
        st = first(work, lambda s: verdict(s) == "DEGRADED", 60)
    finally:
        stop(p)
        broker.stop()
    return f"broker killed (SIGKILL): DEGRADED {st['written_at'] - t_kill:.2f} s later"


ACK_TIMEOUT_S = 5.0


def broker_silent(work: Path) -> str:
    """A broker that keeps the connection but acknowledges nothing: mosquitto SIGSTOPped
    (the kernel still accepts the agent's packets)."""
    broker = Broker(work / "broker")
    broker.start()
    mqtt = mqtt_to(broker, f"ack_timeout_s = {ACK_TIMEOUT_S}\n")
    p = start(work, config(work, synthetic("press"), mqtt=mqtt))
    assert broker._proc is not None
    try:
        first(work, lambda s: s["mqtt"]["connected"] and verdict(s) == "OK", 60)
        broker._proc.send_signal(signal.SIGSTOP)
        t_stop = time.time()
        st = first(work, lambda s: verdict(s) == "DEGRADED", 120)
        why = assess(Snapshot("", True, st, pid_alive=True), st["written_at"]).reasons[0]
    finally:
        broker._proc.send_signal(signal.SIGCONT)
        stop(p)
        broker.stop()
    return (
        f"broker stops acknowledging (SIGSTOP, ack_timeout_s = {ACK_TIMEOUT_S:g}): DEGRADED "
        f"{st['written_at'] - t_stop:.2f} s later ({why.split(';')[0]})"
    )


def _outbox_seqs(state: Path) -> set[int]:
    db = sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True, timeout=30)
    try:
        return {int(r[0]) for r in db.execute("SELECT seq FROM records")}
    finally:
        db.close()


def shutdown_8_streams_draining(work: Path) -> str:
    """A backlog stored while the broker was away (a first run at full speed), then 8
    streams with the broker reachable: SIGTERM as soon as the link is up, so the outbox
    is still draining and the shutdown's drain grace is used."""
    broker = Broker(work / "broker")
    fill = "".join(fast_synthetic(f"line{i}", 0.0) for i in range(2))
    p = start(work, config(work, fill, mqtt=mqtt_to(broker)))  # not started yet: away
    try:
        first(work, lambda s: s["outbox"]["depth"] >= 20_000, 300)
    finally:
        stop(p)
    broker.start()
    sub = Subscriber(broker.host, broker.port, "edge/gw-m/#", client_id="measure-sub")
    streams = "".join(synthetic(f"line{i}") for i in range(8))
    p = start(work, config(work, streams, mqtt=mqtt_to(broker)))
    try:
        st = first(work, lambda s: s["mqtt"]["connected"], 120)
        at_term = _outbox_seqs(work / "state")
    finally:
        t0 = time.monotonic()
        stop(p)
        took = time.monotonic() - t0
    try:
        left = _outbox_seqs(work / "state")
        time.sleep(3)  # the subscriber receives what the broker acknowledged
        got = set()
        for m in sub.messages:
            try:
                seq = m.json().get("seq")
            except ValueError:
                continue
            if isinstance(seq, int):
                got.add(seq)
    finally:
        sub.close()
        broker.stop()
    sent = at_term & got
    missing = at_term - got - left
    return (
        f"SIGTERM, 8 streams, {len(at_term)} records in the outbox, broker reachable: exit "
        f"{p.returncode} after {took:.2f} s; {len(sent)} of them delivered during the stop "
        f"(drain grace), {len(at_term & left)} left in the outbox for the next start, "
        f"{len(missing)} lost (status depth when connected: {st['outbox']['depth']})"
    )


MEASURES: dict[str, Callable[[Path], str]] = {
    f.__name__: f
    for f in (
        crash_past_budget,
        hung_loop,
        silent_sensor,
        outbox_locked,
        broker_killed,
        broker_silent,
        shutdown_8_streams,
        shutdown_8_streams_draining,
    )
}


def main() -> None:
    names = sys.argv[1:] or list(MEASURES)
    for name in names:
        with tempfile.TemporaryDirectory(prefix="ea-measure-") as d:
            print(f"- {MEASURES[name](Path(d))}", flush=True)


if __name__ == "__main__":
    main()
