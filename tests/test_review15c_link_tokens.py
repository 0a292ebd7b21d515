"""Review of 9821ee5 (a publish sits in MqttLink._inflight under a negative token until
paho gives its mid), against a real mosquitto. The publisher is held the way a loaded
machine holds it (the commit's own test does the same): after paho took the message,
before the publisher registers its mid."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from edge_agent.reporting.link import MqttLink
from edge_agent.reporting.session_watch import PACKET_TOO_LARGE
from tests.mosquitto import Broker
from tests.reporting.helpers import bare_link, wait_until
from tests.reporting.test_broker_limits import hold_publisher_until_paho_waits

pytestmark = pytest.mark.broker


def _link(broker: Broker, protocol: str, cid: str) -> MqttLink:
    return bare_link(broker, cid, protocol=protocol)


def _connects(broker: Broker, cid: str) -> int:
    return len(re.findall(rf"New client connected .* as {cid}", broker.log()))


def test_v5_a_publish_in_progress_at_connack_is_judged_by_the_announced_limit(
    limited_broker: Broker,
) -> None:
    """The publish is taken by paho while offline (limit unknown), and gets its mid
    only after on_connect learned the broker's 300-byte limit. on_connect skips tokens
    ("judged once it has one"), but _resolve never judges it: paho re-sends the 700-byte
    message, the broker closes the connection (0x95) and the link connects a second time.
    Expected: set aside without a drop, as a message queued with its mid is."""
    link = _link(limited_broker, "5", "gw-v5tok")
    real = link._client.publish

    def publish_then_lose_the_cpu(*a: Any, **kw: Any) -> Any:
        info = real(*a, **kw)  # queued by paho (not connected yet)
        link.start()
        # the publisher runs again only once the broker has sent its CONNACK
        wait_until(lambda: "Sending CONNACK to gw-v5tok" in limited_broker.log(), 20)
        return info

    link._client.publish = publish_then_lose_the_cpu  # type: ignore[method-assign]
    link.wake_hook = lambda: None
    try:
        mid = link.publish("edge/gw-v5tok/events", b"x" * 700)
        ack = link.acks.get(timeout=30)
        assert (ack.mid, ack.reason) == (mid, PACKET_TOO_LARGE)
        time.sleep(3.0)  # a drop, had there been one, is followed by a reconnect
        assert wait_until(lambda: link.connected, 20)
        assert _connects(limited_broker, "gw-v5tok") == 1, limited_broker.log()
    finally:
        link.stop(timeout=2.0)


def test_v311_a_publisher_away_during_both_drops_still_gets_its_message_set_aside(
    limited_broker: Broker,
) -> None:
    """Found against 9821ee5's tokens: a token the verdict set aside was not waited for,
    the message was re-sent, and drops blamed on nothing were taken for a duplicate client
    id (4 connects). The redesign (paho's callbacks wait for publishes in progress) has no
    tokens; the same fault, a publisher away while paho handles the broker's closes: the
    message is blamed, set aside at the second drop, 3 connects, no takeover."""
    link = _link(limited_broker, "3.1.1", "gw-held2")
    link.start()
    try:
        assert wait_until(lambda: link.connected, 20)
        link.wake_hook = lambda: None
        waited = hold_publisher_until_paho_waits(link)
        mid = link.publish("edge/gw-held2/events", b"x" * 700)
        assert waited.is_set()
        ack = link.acks.get(timeout=30)
        assert (ack.mid, ack.reason) == (mid, PACKET_TOO_LARGE)
        time.sleep(3.0)
        assert wait_until(lambda: link.connected, 30)
        # (seen: the drops after the set-aside, blamed on nothing, are taken for a
        # duplicate client id: "another client uses this client id", 4 s backoffs)
        assert link.stats().takeovers == 0, link.stats().last_error
        assert _connects(limited_broker, "gw-held2") == 3, limited_broker.log()
    finally:
        link.stop(timeout=2.0)
