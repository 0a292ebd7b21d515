"""Reporter.subscribe: extra topic filters, delivered to their handler, subscribed again
after every reconnect (so retained announcements arrive again), against a real mosquitto."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, MqttConfig
from edge_agent.errors import PublishError
from edge_agent.reporting.reporter import Reporter
from ota.publish import MqttTarget, publish_retained
from tests.mosquitto import Broker

pytestmark = pytest.mark.broker


def test_subscribed_filter_gets_retained_messages_after_each_reconnect(
    broker: Broker, tmp_path: Path
) -> None:
    cfg = AgentConfig(
        device_id="gw-01",
        state_dir=str(tmp_path),
        mqtt=MqttConfig(port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.2),
    )
    got: list[tuple[str, bytes]] = []
    cond = threading.Condition()

    def handler(topic: str, payload: bytes) -> None:
        with cond:
            got.append((topic, payload))
            cond.notify_all()

    def wait_count(n: int) -> bool:
        with cond:
            return cond.wait_for(lambda: len(got) >= n, timeout=10)

    publish_retained(MqttTarget(broker.host, broker.port), [("edge/fleet/line-1/ota", b"A1")])
    rep = Reporter(cfg, tmp_path, dict)
    rep.subscribe("edge/fleet/+/ota", handler)
    rep.start()
    try:
        assert wait_count(1)
        assert got[0] == ("edge/fleet/line-1/ota", b"A1")
        broker.restart()
        assert wait_count(2)  # retained again after the reconnect
        with pytest.raises(PublishError):
            rep.subscribe("edge/late", handler)  # only before start()
    finally:
        rep.stop()
    assert all(t == "edge/fleet/line-1/ota" for t, _ in got)
