"""Devices on one mosquitto, the operator on another, bridged: `edge-ota fleet status`
sees the devices' retained state and `fleet cmd` reaches them, over an MQTT 3.1.1 bridge
(MQTT 5 properties dropped) and an MQTT 5 bridge. No agent change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.fleetrig import (
    AgentProc,
    agent_config,
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


@pytest.mark.parametrize("bridge_protocol", ["mqttv311", "mqttv50"])
def test_fleet_status_and_commands_work_across_a_bridge(
    tmp_path: Path, bridge_protocol: str
) -> None:
    site = Broker(tmp_path / "site")
    site.start()
    central = Broker(
        tmp_path / "central",
        extra=(
            "connection site-1",
            f"address {site.host}:{site.port}",
            "topic edge/# both 1",
            f"bridge_protocol_version {bridge_protocol}",
            # the private-bridge flag is mosquitto's 3.1.1 extension: only with that protocol
            f"try_private {'true' if bridge_protocol == 'mqttv311' else 'false'}",
            "cleansession true",
            "restart_timeout 1",
            # the test broker's "unlimited" (0) would go out as an MQTT 5 Receive Maximum
            # of 0 in the bridge's CONNECT, which the site broker refuses as a protocol error
            "max_inflight_messages 20",
        ),
    )
    central.start()
    agents = [
        AgentProc(
            agent_config(tmp_path / f"{d}.toml", site, d, group="site-1"), tmp_path / f"{d}.log"
        )
        for d in ("gw-s1", "gw-s2")
    ]
    try:
        want = {"gw-s1", "gw-s2"}
        assert wait_until(lambda: devices_seen(fleet_status(central), "OK") == want, 90), (
            central.log()[-3000:]
        )

        # a device's model versions are a retained message of their own: they may cross
        # the bridge after its health (the verdict waited for above)
        def site_rows() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = fleet_status(central, "--group", "site-1")["devices"]
            return rows

        assert wait_until(lambda: all(r["versions"] for r in site_rows()), 60), site_rows()
        rows = site_rows()
        assert {r["device"] for r in rows} == want
        for row in rows:
            assert row["versions"] == {"vibration-ae": "v1"}, row
        p = fleet_cmd(central, "--group", "site-1", "status", "--json", "--timeout", "30")
        assert p.returncode == 0, p.stdout + p.stderr
        doc = json.loads(p.stdout)
        assert set(doc["devices"]) == want
        assert all(d["ok"] for d in doc["devices"].values())
        p = fleet_cmd(central, "--device", "gw-s2", "logs", "lines=3", "--timeout", "30")
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout.startswith("gw-s2: ok")
        # a device that stops is shown offline on the central broker too
        agents[0].stop()
        assert wait_until(lambda: devices_seen(fleet_status(central)) == {"gw-s2"}, 60)
    finally:
        for a in agents:
            a.stop()
        central.stop()
        site.stop()
