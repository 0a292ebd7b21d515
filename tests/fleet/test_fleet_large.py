"""`edge-ota fleet status` reads a large fleet completely from a broker with mosquitto's
default per-client queue (1000 messages): a subscriber that takes every retained message
at once falls behind and the broker drops the rest; reading one section at a time, each
closed by a sentinel, does not."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fleet.fleetrig import fleet_status
from tests.mosquitto import Broker, mosquitto_available

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed"),
]

DEVICES = 2000


def _populate(broker: Broker, n: int) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="populate")
    c.max_inflight_messages_set(200)
    c.connect(broker.host, broker.port)
    c.loop_start()
    now = time.time()
    infos = []
    for i in range(n):
        d = f"sim-{i:05d}"
        env = {"v": 1, "device": d, "seq": 1, "ts": now}
        bodies = {
            "status": {**env, "state": "online"},
            "state/health": {**env, "group": f"g{i % 4}", "verdict": "OK", "reasons": []},
            "state/models": {**env, "streams": [{"stream": "s", "family": "vib", "version": 3}]},
            "state/ota": {**env, "phase": "idle", "target": None, "last": None},
            "state/alarms": {**env, "streams": [{"stream": "s", "open": i % 100 == 0}]},
        }
        for sub, body in bodies.items():
            infos.append(c.publish(f"edge/{d}/{sub}", json.dumps(body), qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def test_every_device_and_section_is_read_under_the_default_broker_queue(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", extra=("max_queued_messages 1000",))
    broker.start()
    try:
        _populate(broker, DEVICES)
        doc = fleet_status(broker)
        assert doc["read"]["ended_by"] == "sentinel"
        assert doc["read"]["messages"] == 5 * DEVICES
        rows = doc["devices"]
        assert len(rows) == DEVICES
        assert all(r["verdict"] == "OK" and r["ota_phase"] == "idle" for r in rows)
        assert doc["totals"]["versions"] == {"vib v3": DEVICES}
        assert doc["totals"]["alarms_open"] == DEVICES // 100
        assert "dropped" not in broker.log()
        g1 = fleet_status(broker, "--group", "g1")["devices"]
        assert len(g1) == DEVICES // 4
    finally:
        broker.stop()
