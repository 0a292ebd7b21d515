"""Review of issue 15, end to end: a real agent whose state disk hangs (a frozen ext4)
keeps its main loop turning and, on SIGTERM, finishes its stop within SHUTDOWN_S with
the disk still frozen (it says which records were only in memory). A thread blocked in
the kernel on the frozen filesystem cannot be killed until it thaws, so the test looks
for the agent's own last line, not for the process's exit."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from edge_agent.agent import SHUTDOWN_S
from tests.agentutil import AgentProc
from tests.diskfaults import ext4_fs
from tests.test_supervision_e2e import _config, _stream

OFTEN = ", first_anomaly_s = 1, anomaly_every_s = 2, anomaly_duration_s = 1"


def test_the_agent_stops_in_time_while_its_state_disk_hangs(
    tmp_path: Path,
    agents: list[AgentProc],
) -> None:
    with ext4_fs(tmp_path / "fs") as fs:
        streams = "".join(_stream(f"s{i}", anomalies=OFTEN) for i in range(2))
        cfg = _config(tmp_path / "a.toml", streams, mqtt="enabled = false")
        state = fs / "state"
        a = AgentProc(cfg, state, tmp_path / "a.log", {})
        agents.append(a)
        try:
            a.until(lambda s: s["outbox"]["depth"] > 0, 120, "records stored")
            subprocess.run(["fsfreeze", "-f", str(fs)], check=True)
            time.sleep(4.0)  # the writers block; the main loop must go on
            t0 = time.monotonic()
            a.proc.send_signal(signal.SIGTERM)
            deadline = t0 + SHUTDOWN_S + 5.0
            while time.monotonic() < deadline and "edge-agent stopped" not in a.text():
                time.sleep(0.2)
            took = time.monotonic() - t0
            text = a.text()
        finally:
            subprocess.run(["fsfreeze", "-u", str(fs)], check=False, capture_output=True)
        assert "edge-agent stopped" in text, f"no stop within {took:.1f} s:\n{text[-3000:]}"
        assert a.proc.wait(60) == 0
