"""The device-state publisher over a real Reporter and mosquitto: sections retained on the
broker follow the snapshot; the retained birth follows the serving models (it said v1
after v7 was committed until a rebirth); after a broker lost its retained messages they
come back."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent.reporting.device_state import StateGate
from edge_agent.reporting.reporter import Reporter
from edge_agent.service.fleet_state import DeviceStatePublisher
from tests.mosquitto import Broker
from tests.reporting.helpers import make_config, wait_until
from tests.subscriber import Subscriber

pytestmark = pytest.mark.broker


def _snap(version: int, now: float = 1.0) -> dict[str, Any]:
    return {
        "v": 1,
        "written_at": now,
        "running": True,
        "agent_version": "0.1.0",
        "streams": [{"name": "s", "model": {"name": "vib-int8", "version": version}}],
        "ota": {"enabled": True, "state": "idle", "last_result": f"committed v{version}"},
        "mqtt": {"enabled": True, "connected": True},
    }


def _retained(broker: Broker, topic: str) -> dict[str, Any] | None:
    s = Subscriber(broker.host, broker.port, topic, client_id=f"peek-{uuid.uuid4().hex[:8]}")
    try:
        s.wait_for(lambda m: len(m) > 0, 3)
        got = [m.json() for m in s.messages if m.retain]
        return got[-1] if got else None
    finally:
        s.close()


def test_birth_and_state_follow_the_serving_model_without_a_rebirth(
    broker: Broker, tmp_path: Path
) -> None:
    serving = {"version": 1}
    rep = Reporter(
        make_config(broker),
        tmp_path / "st",
        birth=lambda: {"models": [{"stream": "s", "version": serving["version"]}]},
    )
    clock = [0.0]
    pub = DeviceStatePublisher(
        rep, "line-3", lambda: {"s": "vib"}, gate=StateGate(min_interval_s=0.0),
        clock=lambda: clock[0],
    )  # fmt: skip
    rep.start()
    try:
        assert wait_until(lambda: rep.snapshot()["mqtt"]["connected"])
        assert pub.tick(_snap(1), 1.0) == ["health", "models", "ota", "alarms"]
        assert wait_until(lambda: rep.snapshot()["outbox"]["depth"] == 0)

        def birth_version() -> Any:
            b = _retained(broker, "edge/gw-01/status")
            return b and b["models"][0]["version"]

        def state_version() -> Any:
            m = _retained(broker, "edge/gw-01/state/models")
            return m and m["streams"][0]["version"]

        assert wait_until(lambda: state_version() == 1, 20)
        assert birth_version() == 1
        serving["version"] = 7  # an update committed v7
        clock[0] = 10.0
        assert pub.tick(_snap(7, 10.0), 10.0) == ["models", "ota"]
        assert wait_until(lambda: birth_version() == 7, 20)
        assert state_version() == 7
        ota = _retained(broker, "edge/gw-01/state/ota")
        assert ota is not None
        assert ota["last"]["outcome"] == "committed"
        # nothing changed: nothing sent
        clock[0] = 20.0
        assert pub.tick(_snap(7, 20.0), 20.0) == []
    finally:
        rep.stop()


def test_state_is_sent_again_after_a_broker_that_lost_it(broker: Broker, tmp_path: Path) -> None:
    rep = Reporter(make_config(broker), tmp_path / "st", birth=dict)
    pub = DeviceStatePublisher(rep, "g", lambda: {"s": "vib"})
    rep.start()
    try:
        assert wait_until(lambda: rep.snapshot()["mqtt"]["connected"])
        pub.tick(_snap(3), 1.0)
        assert wait_until(lambda: _retained(broker, "edge/gw-01/state/models") is not None, 20)
        # the broker forgets everything (no persistence, no session)
        broker.stop()
        for f in broker.dir.glob("*.db"):
            f.unlink()
        broker.start()
        assert wait_until(lambda: rep.snapshot()["mqtt"]["connected"], 30)

        def back() -> bool:
            pub.tick(_snap(3), 2.0)
            return _retained(broker, "edge/gw-01/state/models") is not None

        assert wait_until(back, 30)
    finally:
        rep.stop()
