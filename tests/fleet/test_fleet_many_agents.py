"""Many real agents (1 Hz synthetic streams, distinct device ids and state dirs) against one
mosquitto: `edge-ota fleet status` shows every one of them OK and serving; a group command
reaches all; one stopped is shown offline. How many this machine held, with RSS and CPU,
is printed (run with -s) and recorded in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from tests.fleet.fleetrig import (
    AgentProc,
    agent_config,
    cpu_rss,
    devices_seen,
    fleet_cmd,
    fleet_status,
    wait_until,
)
from tests.mosquitto import Broker, mosquitto_available

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed"),
]

# What a shared 2-core test machine holds without starving the other tests; override
# with EDGE_FLEET_AGENTS for a bigger machine.
AGENTS = int(os.environ.get("EDGE_FLEET_AGENTS", "12"))


def test_fleet_status_shows_every_real_agent(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    names = [f"gw-{i:02d}" for i in range(AGENTS)]
    agents = []
    try:
        for i, d in enumerate(names):
            cfg = agent_config(tmp_path / f"{d}.toml", broker, d, group=f"line-{i % 2}")
            agents.append(AgentProc(cfg, tmp_path / f"{d}.log"))
        started = time.monotonic()
        assert wait_until(lambda: devices_seen(fleet_status(broker), "OK") == set(names), 240), (
            fleet_status(broker)
        )
        up_s = time.monotonic() - started
        # each device's versions are a retained message of their own, published after
        # its health (the verdict waited for above)
        assert wait_until(lambda: all(r["versions"] for r in fleet_status(broker)["devices"]), 60)
        doc = fleet_status(broker)
        assert {r["device"] for r in doc["devices"]} == set(names)
        assert all(r["versions"] == {"vibration-ae": "v1"} for r in doc["devices"])
        assert doc["totals"]["online"] == AGENTS
        before = {a.proc.pid: cpu_rss(a.proc.pid) for a in agents}
        t0 = time.monotonic()
        p = fleet_cmd(broker, "--group", "line-0", "ping", "--json", "--timeout", "60")
        assert p.returncode == 0, p.stdout + p.stderr
        assert set(json.loads(p.stdout)["devices"]) == set(names[0::2])
        time.sleep(max(0.0, 20.0 - (time.monotonic() - t0)))
        took = time.monotonic() - t0
        after = {a.proc.pid: cpu_rss(a.proc.pid) for a in agents}
        cpu = [(after[k][0] - before[k][0]) / took for k in before]
        rss = [after[k][1] / 2**20 for k in after]
        print(
            f"\n{AGENTS} agents: all OK in fleet status {up_s:.0f} s after start; "
            f"RSS median {statistics.median(rss):.0f} MB (max {max(rss):.0f}); CPU share "
            f"median {statistics.median(cpu):.3f} of a core (sum {sum(cpu):.2f})"
        )
        agents[0].stop()
        assert wait_until(lambda: devices_seen(fleet_status(broker)) == set(names[1:]), 60)
    finally:
        for a in agents:
            a.stop()
        broker.stop()
