"""At-least-once delivery against a real mosquitto: outages, kills, disk budget, Last Will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.reporting import Reporter
from tests.mosquitto import Broker
from tests.reporting.helpers import (
    config_dict,
    event_seqs,
    first_occurrences,
    make_config,
    wait_until,
    write_toml,
)
from tests.subscriber import Subscriber

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "reporter_driver.py"


@pytest.fixture
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.host, broker.port, "edge/#")
    yield s
    s.close()


def _birth() -> dict[str, object]:
    return {"profile": "test", "models": [{"name": "vibration-ae", "version": 3}]}


def test_broker_restart_mid_stream_loses_no_event_and_keeps_order(
    broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    r = Reporter(make_config(broker), tmp_path / "state", birth=_birth)
    r.start()
    try:
        sent = [r.publish_event({"event": "start", "stream": "s1", "i": i}) for i in range(150)]
        broker.stop()
        sent += [r.publish_event({"event": "start", "stream": "s1", "i": i}) for i in range(150)]
        assert r.snapshot()["outbox"]["depth"] > 0  # really spooled during the outage
        broker.start()
        sent += [r.publish_event({"event": "end", "stream": "s1", "i": i}) for i in range(100)]
        ok = sub.wait_for(lambda m: set(sent) <= set(event_seqs(m)), timeout=20)
        got = event_seqs(sub.messages)
        assert ok, f"missing seqs: {sorted(set(sent) - set(got))[:20]}"
        assert first_occurrences(got) == sorted(first_occurrences(got))
        assert wait_until(lambda: r.snapshot()["outbox"]["depth"] == 0)
        assert r.snapshot()["mqtt"]["reconnects"] >= 1
    finally:
        r.stop()


def test_disk_budget_in_outage_drops_telemetry_first_and_keeps_every_event(
    broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    cfg = make_config(broker, outbox={"max_bytes": 40_000})
    r = Reporter(cfg, tmp_path / "state", birth=_birth)
    r.start()
    try:
        assert wait_until(lambda: r.snapshot()["mqtt"]["connected"])
        broker.stop()
        assert wait_until(lambda: not r.snapshot()["mqtt"]["connected"])
        events = []
        for i in range(400):
            r.publish_telemetry({"stream": "s1", "windows": i, "pad": "t" * 100})
            if i % 4 == 0:
                events.append(r.publish_event({"event": "start", "stream": "s1", "i": i}))
        snap = r.snapshot()
        assert snap["outbox"]["bytes"] <= 40_000
        assert snap["outbox"]["drops"]["telemetry"] > 0
        assert snap["outbox"]["drops"]["event"] == 0
        broker.start()
        assert sub.wait_for(lambda m: set(events) <= set(event_seqs(m)), timeout=20)
    finally:
        r.stop()


def _driver(cfg: Path, state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(cfg), str(state), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )


def _read_seqs(proc: subprocess.Popen[str], until_done: bool, n: int = 0) -> list[int]:
    """Read {"seq"} lines until `n` seqs were seen, or until {"done"} (in a thread: bounded)."""
    seqs: list[int] = []
    finished = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            obj = json.loads(line)
            if "seq" in obj:
                seqs.append(obj["seq"])
                if not until_done and len(seqs) >= n:
                    break
            elif "done" in obj:
                break
        finished.set()

    threading.Thread(target=reader, daemon=True).start()
    assert finished.wait(30), "driver produced no output"
    return list(seqs)


def test_sigkill_mid_stream_then_restart_delivers_unacked_and_seq_continues(
    broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    cfg = write_toml(tmp_path / "agent.toml", config_dict(broker))
    state = tmp_path / "state"
    p1 = _driver(cfg, state, "--events", "100000", "--interval", "0.002")
    first = _read_seqs(p1, until_done=False, n=100)
    broker.stop()  # from here on nothing can be acknowledged
    first += _read_seqs(p1, until_done=False, n=100)
    p1.send_signal(signal.SIGKILL)
    p1.wait(10)
    assert p1.stdout is not None
    first += [json.loads(x)["seq"] for x in p1.stdout.read().splitlines() if '"seq"' in x]
    p1.stdout.close()
    broker.start()
    p2 = _driver(cfg, state, "--events", "50", "--exit-when-drained")
    second = _read_seqs(p2, until_done=True)
    try:
        assert min(second) > max(first)  # seq continues, never reused
        want = set(first) | set(second)
        ok = sub.wait_for(lambda m: want <= set(event_seqs(m)), timeout=20)
        assert ok, f"missing: {sorted(want - set(event_seqs(sub.messages)))[:20]}"
        assert p2.wait(30) == 0
    finally:
        if p2.poll() is None:
            p2.kill()
            p2.wait(5)
        if p2.stdout:
            p2.stdout.close()


def test_sigkill_makes_the_broker_publish_the_last_will_offline(
    broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    cfg = write_toml(tmp_path / "agent.toml", config_dict(broker))
    p = _driver(cfg, tmp_path / "state", "--events", "1")
    try:
        _read_seqs(p, until_done=True)

        def status_is(state: str) -> bool:
            return any(m.json().get("state") == state for m in sub.on("/status"))

        assert wait_until(lambda: status_is("online"))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        assert wait_until(lambda: status_is("offline"), timeout=10)
        last = sub.on("/status")[-1].json()
        assert last["state"] == "offline"
        assert last["clean"] is False
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        if p.stdout:
            p.stdout.close()
    # It is retained: a new subscriber sees "offline" at once.
    late = Subscriber(broker.host, broker.port, "edge/gw-01/status", client_id="late")
    try:
        assert late.wait_for(lambda m: len(m) > 0, timeout=60)
        assert late.messages[0].retain
        assert late.messages[0].json()["state"] == "offline"
    finally:
        late.close()


def test_clean_stop_publishes_retained_offline(
    broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    r = Reporter(make_config(broker), tmp_path / "state", birth=_birth)
    r.start()
    assert wait_until(lambda: r.snapshot()["mqtt"]["connected"])
    r.stop()
    assert sub.wait_for(lambda m: any(x.json().get("state") == "offline" for x in m), 60)
    last = sub.on("/status")[-1].json()
    assert last == {**last, "state": "offline", "clean": True}
