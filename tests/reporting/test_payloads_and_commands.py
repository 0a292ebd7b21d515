"""Real published payloads validate against docs/schemas; commands and their replies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as paho
import pytest
from paho.mqtt.properties import Properties

from edge_agent.errors import PublishError
from edge_agent.reporting import Reporter
from edge_agent.reporting.payloads import event_body, ota_state_body, telemetry_body
from tests.mosquitto import Broker
from tests.reporting.helpers import config_dict, make_config, wait_until, write_toml
from tests.subscriber import Received, Subscriber

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"


def _schema(name: str) -> dict[str, Any]:
    s = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(s)
    return s


def _validate(name: str, msg: Received) -> None:
    jsonschema.validate(msg.json(), _schema(name), cls=jsonschema.Draft202012Validator)


def _birth() -> dict[str, object]:
    return {"profile": "rpi4", "models": [{"name": "vibration-ae", "version": 3}]}


@pytest.fixture
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.host, broker.port, "edge/#")
    yield s
    s.close()


@pytest.fixture
def reporter(broker: Broker, tmp_path: Path) -> Iterator[Reporter]:
    r = Reporter(make_config(broker), tmp_path / "state", birth=_birth)
    r.start()
    assert wait_until(lambda: r.snapshot()["mqtt"]["connected"])
    yield r
    r.stop()


@pytest.mark.broker
def test_every_published_payload_matches_its_schema(
    broker: Broker, sub: Subscriber, reporter: Reporter, tmp_path: Path
) -> None:
    reporter.publish_event(
        event_body(
            event="start",
            stream="s1",
            score=3.2,
            threshold=1.5,
            model="vibration-ae",
            model_version=3,
            t_start=1.7e9,
        )
    )
    reporter.publish_event(
        event_body(
            event="end",
            stream="s1",
            score=float("nan"),
            threshold=1.5,
            model="vibration-ae",
            model_version=3,
            t_start=1.7e9,
            t_end=1.7e9 + 4,
            peak_score=7.5,
        )
    )
    reporter.publish_telemetry(
        telemetry_body(
            stream="s1",
            interval_s=60,
            windows=1200,
            score_mean=0.4,
            score_max=3.2,
            alarms=1,
            drops=0,
            model_version=3,
        )
    )
    reporter.publish_ota_state(ota_state_body(state="validating", version=4, slot="b"))
    assert sub.wait_for(lambda m: len([x for x in m if "/ota/state" in x.topic]) == 1, 10)
    assert sub.wait_for(lambda m: len([x for x in m if x.topic.endswith("/events")]) == 2, 10)
    reporter.stop()  # clean offline
    assert sub.wait_for(lambda m: any(x.json().get("state") == "offline" for x in m), 10)
    # Last Will from a killed process, too.
    cfg = write_toml(tmp_path / "a.toml", config_dict(broker, device="gw-02"))
    p = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "reporter_driver.py"),
            str(cfg),
            str(tmp_path / "s2"),
            "--events",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert sub.wait_for(lambda m: any("gw-02/status" in x.topic for x in m), 15)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    assert sub.wait_for(lambda m: len([x for x in m if "gw-02/status" in x.topic]) >= 2, 10)
    kinds = {"events": "event", "telemetry": "telemetry", "state": "ota_state", "status": "status"}
    seen = set()
    for m in sub.messages:
        if "/cmd/" in m.topic:
            continue
        name = kinds[m.topic.rsplit("/", 1)[1]]
        _validate(name, m)
        seen.add((name, m.json().get("state"), m.json().get("clean")))
    assert ("status", "online", None) in seen
    assert ("status", "offline", True) in seen
    assert ("status", "offline", False) in seen
    assert {"event", "telemetry", "ota_state"} <= {s[0] for s in seen}
    nan_end = next(m.json() for m in sub.on("/events") if m.json()["event"] == "end")
    assert nan_end["score"] is None  # NaN becomes null, JSON has no NaN


def _request(
    broker: Broker, topic: str, payload: bytes, *, v5: bool = True, correlation: bytes = b"c-1"
) -> Received:
    """Send one command as a separate client and wait for the reply."""
    reply_topic = "ops/replies/1"
    listen = reply_topic if v5 else f"{topic}/reply"
    s = Subscriber(broker.host, broker.port, listen, client_id="operator")
    try:
        props = None
        if v5:
            props = Properties(paho.PacketTypes.PUBLISH)
            props.ResponseTopic = reply_topic
            props.CorrelationData = correlation
        s.client.publish(topic, payload, qos=1, properties=props)
        assert s.wait_for(lambda m: len(m) > 0, 10), "no reply"
        return s.messages[0]
    finally:
        s.close()


@pytest.mark.broker
def test_ping_replies_on_response_topic_with_correlation_data(
    broker: Broker, reporter: Reporter
) -> None:
    rep = _request(broker, "edge/gw-01/cmd/ping", b"{}", correlation=b"abc-42")
    _validate("command_reply", rep)
    body = rep.json()
    assert body["ok"] is True
    assert body["command"] == "ping"
    assert body["result"]["pong"] is True
    assert rep.properties is not None
    assert rep.properties.CorrelationData == b"abc-42"


@pytest.mark.broker
def test_unknown_and_malformed_commands_get_error_replies_and_change_nothing(
    broker: Broker, reporter: Reporter
) -> None:
    calls: list[dict[str, Any]] = []
    reporter.register_command("calibrate", lambda p: calls.append(p) or {"started": True})
    rep = _request(broker, "edge/gw-01/cmd/format-disk", b"{}")
    _validate("command_reply", rep)
    assert rep.json()["ok"] is False
    assert "unknown command" in rep.json()["error"]
    rep = _request(broker, "edge/gw-01/cmd/calibrate", b"{not json")
    _validate("command_reply", rep)
    assert rep.json()["ok"] is False
    assert "not JSON" in rep.json()["error"]
    rep = _request(broker, "edge/gw-01/cmd/calibrate", b"[1, 2]")
    assert rep.json()["ok"] is False
    assert calls == []
    rep = _request(broker, "edge/gw-01/cmd/calibrate", b'{"stream": "s1"}')
    assert rep.json() == {**rep.json(), "ok": True, "result": {"started": True}}
    assert calls == [{"stream": "s1"}]


@pytest.mark.broker
def test_rebirth_republishes_status(broker: Broker, sub: Subscriber, reporter: Reporter) -> None:
    assert sub.wait_for(lambda m: len(m) >= 1, 10)
    before = len(sub.on("/status"))
    rep = _request(broker, "edge/gw-01/cmd/rebirth", b"")
    seq = rep.json()["result"]["seq"]
    assert sub.wait_for(
        lambda m: any(x.topic.endswith("/status") and x.json()["seq"] == seq for x in m), 10
    )
    assert len(sub.on("/status")) > before
    assert sub.on("/status")[-1].json()["models"] == _birth()["models"]


@pytest.mark.broker
def test_mqtt_311_replies_on_the_reply_topic(broker: Broker, tmp_path: Path) -> None:
    r = Reporter(make_config(broker, protocol="3.1.1"), tmp_path / "st", birth=_birth)
    r.start()
    try:
        assert wait_until(lambda: r.snapshot()["mqtt"]["connected"])
        rep = _request(broker, "edge/gw-01/cmd/ping", b"", v5=False)
        assert rep.topic == "edge/gw-01/cmd/ping/reply"
        assert rep.json()["ok"] is True
    finally:
        r.stop()


def test_mqtt_disabled_still_records_bounded_and_says_disabled(tmp_path: Path) -> None:
    from edge_agent.config import parse_config

    cfg = parse_config(
        {"device_id": "gw-01", "mqtt": {"enabled": False}, "outbox": {"max_bytes": 20_000}}
    )
    r = Reporter(cfg, tmp_path / "st", birth=_birth)
    r.start()
    try:
        seqs = [r.publish_telemetry({"stream": "s", "pad": "x" * 200}) for _ in range(200)]
        assert seqs == sorted(seqs)
        snap = r.snapshot()
        assert snap["mqtt"]["enabled"] is False
        assert snap["mqtt"]["connected"] is False
        assert snap["outbox"]["bytes"] <= 20_000
        assert snap["outbox"]["drops"]["telemetry"] > 0
        assert snap["outbox"]["oldest_age_s"] is not None
    finally:
        r.stop()


def test_payload_may_not_override_the_envelope(tmp_path: Path) -> None:
    from edge_agent.config import parse_config

    r = Reporter(
        parse_config({"device_id": "gw-01", "mqtt": {"enabled": False}}), tmp_path, birth=_birth
    )
    with pytest.raises(PublishError, match="reserved envelope key"):
        r.publish_event({"seq": 1})
    with pytest.raises(PublishError, match="not JSON-serialisable"):
        r.publish_event({"x": object()})
    assert r.snapshot()["outbox"]["depth"] == 0
    r.stop()
