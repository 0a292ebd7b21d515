"""The agent with no broker keeps scoring, spools to its outbox and says so; when the
broker appears, everything drains (a real agent process, a real mosquitto)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agentutil import REPO, read_status
from tests.mosquitto import Broker, mosquitto_available
from tests.subscriber import Subscriber

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed"),
]


def _wait(pred, timeout=20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except (OSError, ValueError, KeyError):
            pass  # the status file is being replaced; try again
        time.sleep(0.1)
    return False


def test_spools_while_the_broker_is_away_and_drains_when_it_appears(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")  # port chosen, not started yet: nothing listens
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-spool"\nstate_dir = "{state}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntelemetry_interval_s = 1\n'
        "reconnect_min_s = 0.2\nreconnect_max_s = 0.5\n"
        '[[streams]]\nname = "demo"\n'
        # 20x real time: an injected anomaly every 3 s of wall time
        'source = {kind = "synthetic", speed = 20.0, first_anomaly_s = 10.0}\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # scoring goes on, records wait in the outbox, and status says so
        assert _wait(lambda: read_status(state)["events_total"] >= 4)
        st = read_status(state)
        assert st["mqtt"]["connected"] is False
        assert st["outbox"]["depth"] >= 4
        assert st["streams"][0]["windows"] > 0
        text = subprocess.run(
            [sys.executable, "-m", "edge_agent", "status", "--state-dir", str(state)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert text.returncode == 1  # DEGRADED, not OK and not DOWN
        assert "not connected" in text.stdout.lower()
        spooled = st["events_total"]

        broker.start()
        sub = Subscriber(broker.host, broker.port, "edge/gw-spool/events", client_id="spool")
        try:
            # every event recorded while away arrives, oldest first, seq increasing
            assert sub.wait_for(lambda ms: len(ms) >= spooled, timeout=20)
            seqs = [m.json()["seq"] for m in sub.messages]
            assert seqs == sorted(seqs)
            assert _wait(lambda: read_status(state)["mqtt"]["connected"] is True)
            # the backlog is gone: what is left is at most the record(s) of the last tick
            # (telemetry is appended just before each status write)
            assert _wait(
                lambda: (
                    read_status(state)["outbox"]["depth"] <= 2
                    and (read_status(state)["outbox"]["oldest_age_s"] or 0) < 2.0
                )
            )
        finally:
            sub.client.disconnect()
            sub.client.loop_stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        broker.stop()
    assert proc.returncode == 0, err.decode()
    final = json.loads((state / "status.json").read_text())
    assert final["running"] is False
