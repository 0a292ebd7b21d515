"""Identity clashes and broker limits against a real mosquitto: a session taken over by a
client with our client id, messages larger than the broker's maximum packet size, and a
connection the broker closes before CONNACK."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edge_agent.reporting import Reporter
from edge_agent.reporting.link import MqttLink
from edge_agent.reporting.session_watch import PACKET_TOO_LARGE
from tests.conftest import _need_mosquitto
from tests.mosquitto import Broker
from tests.reporting.helpers import bare_link, event_seqs, make_config, wait_until
from tests.subscriber import Received, Subscriber

pytestmark = pytest.mark.broker

STATUS_SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "schemas" / "status.json").read_text()
)
DUPLICATE_WITHIN_S = 30.0
# Backoff 1 s doubling, each delay jittered down to half: the attempts after the first
# wait at least 0.5 + 1 + 2 + 4 + 8 = 15.5 s, the 6th 31.5 s. More connects than this in
# 30 s means some backoff step saw two connects.
MAX_CONNECTS_IN_30_S = 6


def _big_birth() -> dict[str, object]:
    return {"profile": "test", "models": [{"name": f"model-{i}", "version": i} for i in range(12)]}


def _trimmed_birth(msg: Received) -> bool:
    if not msg.topic.endswith("/status"):
        return False
    body = msg.json()
    return bool(body.get("state") == "online" and body.get("trimmed"))


def _says_duplicate(r: Reporter) -> bool:
    m = r.snapshot()["mqtt"]
    return m["takeovers"] >= 1 and "another client uses this client id" in (m["last_error"] or "")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_agents_with_one_device_id_report_the_duplicate_and_back_off(
    broker: Broker, tmp_path: Path, protocol: str
) -> None:
    cfg = make_config(
        broker, device="raspberrypi", protocol=protocol, reconnect_min_s=1.0,
        reconnect_max_s=60.0,
    )  # fmt: skip
    a = Reporter(cfg, tmp_path / "a", birth=dict)
    b = Reporter(cfg, tmp_path / "b", birth=dict)
    a.start()
    try:
        assert wait_until(lambda: a.snapshot()["mqtt"]["connected"], 10)
        b.start()
        t0 = time.monotonic()
        both = wait_until(lambda: _says_duplicate(a) and _says_duplicate(b), DUPLICATE_WITHIN_S)
        assert both, (a.snapshot()["mqtt"], b.snapshot()["mqtt"])
        time.sleep(max(0.0, t0 + 30.0 - time.monotonic()))
        for r in (a, b):
            assert r.snapshot()["mqtt"]["reconnects"] + 1 <= MAX_CONNECTS_IN_30_S
    finally:
        a.stop()
        b.stop()
    takeovers = len(re.findall("already connected, closing old connection", broker.log()))
    assert 1 <= takeovers <= 2 * MAX_CONNECTS_IN_30_S


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_oversized_messages_are_set_aside_and_the_rest_flows(
    limited_broker: Broker, tmp_path: Path, protocol: str
) -> None:
    sub = Subscriber(limited_broker.host, limited_broker.port, "edge/#")
    r = Reporter(make_config(limited_broker, protocol=protocol), tmp_path / "s", _big_birth)
    r.start()
    try:
        small = [r.publish_event({"event": "start", "stream": "s1", "i": i}) for i in range(5)]
        r.publish_event({"event": "start", "stream": "s1", "pad": "x" * 600})
        small += [r.publish_event({"event": "end", "stream": "s1", "i": i}) for i in range(5)]
        assert sub.wait_for(lambda m: set(small) <= set(event_seqs(m)), timeout=30)
        # the trimmed birth comes with the connect after the full one was set aside (the
        # outbox may be empty in between)
        assert sub.wait_for(lambda m: any(_trimmed_birth(x) for x in m), timeout=30)
        assert wait_until(lambda: r.snapshot()["outbox"]["depth"] == 0, 30)
        m = r.snapshot()["mqtt"]
        assert m["oversized"] >= 1
        limit = m["max_packet_size"]
        assert limit is not None
        # MQTT 5: as the broker announced; 3.1.1: learned, between what it took and refused
        assert limit == 300 if protocol == "5" else 300 <= limit < 700
        births = [x.json() for x in sub.messages if x.topic.endswith("/status")]
        trimmed = [b for b in births if b.get("state") == "online" and b.get("trimmed")]
        assert trimmed
        for b in trimmed:  # still a valid birth: what consumers rely on is there
            jsonschema.validate(b, STATUS_SCHEMA, cls=jsonschema.Draft202012Validator)
            assert "rebirth" in b["commands"]
        connects = len(re.findall(r"New client connected .* as edge-agent-", limited_broker.log()))
        # no reconnect storm: MQTT 5 knows the limit from the CONNACK; a 3.1.1 broker only
        # closes the connection, and each close teaches which message was too large
        assert connects <= (2 if protocol == "5" else 2 + m["oversized"])
        assert r.snapshot()["mqtt"]["connected"]
    finally:
        r.stop()
        sub.close()


def test_connection_closed_during_connect_leaves_its_reason_in_status(tmp_path: Path) -> None:
    _need_mosquitto()
    tiny = Broker(tmp_path / "broker", extra=("max_packet_size 20",))  # below our CONNECT
    tiny.start()
    r = Reporter(make_config(tiny), tmp_path / "s", birth=dict)
    r.start()
    try:
        assert wait_until(
            lambda: "during connect" in (r.snapshot()["mqtt"]["last_error"] or ""), 20
        ), r.snapshot()["mqtt"]
        assert not r.snapshot()["mqtt"]["connected"]
    finally:
        r.stop()
        tiny.stop()


def hold_publisher_until_paho_waits(link: MqttLink, extra_s: float = 0.3) -> threading.Event:
    """Make `link`'s next publish lose the CPU the way a loaded machine makes it: paho has
    taken (and may write) the message, but the publisher runs again only once paho's
    thread, handling what the broker answered, waits for it, and `extra_s` later (within
    PUBLISH_WAIT_S). Returns an event set when that wait was seen."""
    real_publish = link._client.publish
    real_await = link._await_publishes
    waited = threading.Event()

    def await_publishes() -> None:
        if link._publishers:
            waited.set()
        real_await()

    def publish_then_lose_the_cpu(*a: Any, **kw: Any) -> Any:
        info = real_publish(*a, **kw)
        if waited.wait(20):
            time.sleep(extra_s)
        link._client.publish = real_publish  # type: ignore[method-assign]
        return info

    link._await_publishes = await_publishes  # type: ignore[method-assign]
    link._client.publish = publish_then_lose_the_cpu  # type: ignore[method-assign]
    return waited


def test_a_drop_seen_before_the_publisher_has_its_mid_still_blames_the_message(
    limited_broker: Broker,
) -> None:
    """On a loaded machine paho's thread can write a message, and see a 3.1.1 broker
    close the connection for it, before the thread that published it runs again. The drop
    must still be put down to that message: two drops set it aside, no third connect."""
    link = bare_link(limited_broker, "gw-held", protocol="3.1.1")
    link.start()
    try:
        assert wait_until(lambda: link.connected, 20)
        link.wake_hook = lambda: None
        waited = hold_publisher_until_paho_waits(link)
        mid = link.publish("edge/gw-held/events", b"x" * 700)
        assert waited.is_set()  # the drop was handled while the publisher was away
        ack = link.acks.get(timeout=30)  # set aside at the second drop
        assert (ack.mid, ack.reason) == (mid, PACKET_TOO_LARGE)
        s = link.stats()
        assert s.oversized == 1
        assert s.max_packet_size is not None
        assert s.max_packet_size < 726  # learned: below the packet it closed for
        assert s.takeovers == 0, s.last_error  # never mistaken for a duplicate client id
        assert wait_until(lambda: link.connected, 20)
        connects = re.findall(r"New client connected .* as gw-held", limited_broker.log())
        assert len(connects) == 3, limited_broker.log()  # first, after each of two drops
    finally:
        link.stop(timeout=2.0)
