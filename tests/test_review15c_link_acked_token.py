"""Review of 9821ee5, against a real mosquitto: a message the broker acknowledged while
its publisher was still getting the mid (its PUBACK goes to MqttLink._acked_early) stays
in _inflight as a token, so a drop right after it can blame it and set it aside. _resolve
then queues the set-aside under the mid without looking at _acked_early: the drain gets
a second Ack (Packet too large) for a message already delivered, it is counted oversized,
and the broker's limit is "learned" from a message it took."""

from __future__ import annotations

import queue
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.reporting.session_watch import PACKET_TOO_LARGE
from tests.mosquitto import Broker
from tests.reporting.helpers import bare_link, wait_until

pytestmark = pytest.mark.broker

CID = "gw-acktok"


def _take_over(broker: Broker) -> None:
    """Another client with our client id connects (the broker closes our connection
    without a reason, as MQTT 3.1.1 brokers do) and leaves."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=CID, protocol=paho.MQTTv311)
    c.connect("127.0.0.1", broker.port, 5)
    c.loop_start()
    wait_until(c.is_connected, 10)
    c.disconnect()
    c.loop_stop()


def test_a_message_acknowledged_before_its_mid_is_known_is_never_set_aside(
    limited_broker: Broker,
) -> None:
    link = bare_link(limited_broker, CID, protocol="3.1.1")
    link.wake_hook = lambda: None
    link.start()
    try:
        assert wait_until(lambda: link.connected, 20)
        # the broker drops a 700-byte message: the link learns it has a limit
        big = link.publish(f"edge/{CID}/events", b"x" * 700)
        ack = link.acks.get(timeout=30)
        assert (ack.mid, ack.reason) == (big, PACKET_TOO_LARGE)
        assert wait_until(lambda: link.connected, 30)
        assert link.stats().oversized == 1

        real = link._client.publish

        def publish_then_lose_the_cpu(*a: Any, **kw: Any) -> Any:
            info = real(*a, **kw)
            # descheduled: the broker's PUBACK is handled, then the connection is lost
            assert wait_until(lambda: link.acks.qsize() >= 1, 20)
            _take_over(limited_broker)
            wait_until(lambda: not link.connected, 20)
            return info

        link._client.publish = publish_then_lose_the_cpu  # type: ignore[method-assign]
        small = link.publish(f"edge/{CID}/events", b"y" * 200)
        link._client.publish = real  # type: ignore[method-assign]
        ack = link.acks.get(timeout=10)
        assert (ack.mid, ack.reason) == (small, 0)  # delivered
        assert wait_until(lambda: link.connected, 30)
        wait_until(lambda: link.acks.qsize() >= 1, 5)
        try:
            again = link.acks.get_nowait()
        except queue.Empty:
            again = None
        assert again is None, f"a second Ack for a delivered message: {again}"
        # the broker took it: no limit below its size may be learned from it (seen:
        # max_packet_size 227, every later 228..300-byte message refused locally)
        assert link.fits(f"edge/{CID}/events", b"y" * 200), link.stats()
        assert link.stats().oversized == 1
    finally:
        link.stop(timeout=2.0)
