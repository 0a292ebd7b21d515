"""Home Assistant MQTT discovery: payloads against Home Assistant's documented keys, and a
real agent on a real mosquitto (discovery, state, re-discovery on HA's birth, the Last
Will flipping availability, retained state for a restarted dashboard)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import ConfigError
from edge_agent.reporting.ha_discovery import (
    discovery_messages,
    ha_state_body,
    node_id,
    valid_discovery_prefix,
)
from tests.agentutil import MODELS, REPO
from tests.mosquitto import Broker
from tests.subscriber import Received, Subscriber

# Written from Home Assistant's MQTT docs (integrations/mqtt: "Device discovery payload",
# integrations/binary_sensor.mqtt, integrations/sensor.mqtt), full key names.
DEVICE_DISCOVERY_REQUIRED = {"device", "origin", "components"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer",
    "model", "model_id", "name", "serial_number", "suggested_area", "sw_version",
    "via_device",
}  # fmt: skip
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
_ENTITY_COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "default_entity_id", "device", "device_class", "enabled_by_default", "encoding",
    "entity_category", "entity_picture", "expire_after", "force_update", "group", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id",
    "payload_available", "payload_not_available", "platform", "qos", "state_topic",
    "unique_id", "value_template",
}  # fmt: skip
ALLOWED = {
    "binary_sensor": _ENTITY_COMMON | {"off_delay", "payload_off", "payload_on"},
    "sensor": _ENTITY_COMMON
    | {"last_reset_value_template", "options", "state_class", "suggested_display_precision",
       "unit_of_measurement"},
}  # fmt: skip
# platform and unique_id are required for a component of a device discovery; ours all
# read a state, so state_topic is required here as well.
REQUIRED = {"platform", "unique_id", "state_topic"}
BINARY_SENSOR_CLASSES = {"problem", "safety", "running", "connectivity", "power"}
SENSOR_STATE_CLASSES = {"measurement", "total", "total_increasing"}

DEVICE = "gw-ha"
PREFIX = "plant"
BASE = f"{PREFIX}/{DEVICE}"


def check_device_discovery(topic: str, payload: dict[str, Any], prefix: str) -> list[str]:
    """Every way `payload` breaks Home Assistant's documented schema (empty: valid)."""
    bad: list[str] = []
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[1] != "device" or parts[3] != "config":
        bad.append(f"topic {topic}: not <prefix>/device/<object_id>/config")
    elif node_id(parts[2]) != parts[2]:
        bad.append(f"object id {parts[2]!r} has characters outside [a-zA-Z0-9_-]")
    bad += [f"missing {k}" for k in DEVICE_DISCOVERY_REQUIRED - set(payload)]
    dev = payload.get("device", {})
    bad += [f"device.{k} unknown" for k in set(dev) - DEVICE_KEYS]
    if not dev.get("identifiers") or not dev.get("name"):
        bad.append("device needs identifiers and a name")
    origin = payload.get("origin", {})
    bad += [f"origin.{k} unknown" for k in set(origin) - ORIGIN_KEYS]
    if not origin.get("name"):
        bad.append("origin.name is required")
    for cid, c in payload.get("components", {}).items():
        bad += _check_component(cid, c)
    return bad


def _check_component(cid: str, c: dict[str, Any]) -> list[str]:
    bad: list[str] = []
    if node_id(cid) != cid:
        bad.append(f"component id {cid!r}")
    platform = c.get("platform")
    if platform not in ALLOWED:
        return [*bad, f"{cid}: platform {platform!r}"]
    bad += [f"{cid}.{k} unknown for {platform}" for k in set(c) - ALLOWED[platform]]
    bad += [f"{cid}: missing {k}" for k in REQUIRED - set(c)]
    for a in c.get("availability", []):
        bad += [f"{cid}.availability.{k} unknown" for k in set(a) - AVAILABILITY_KEYS]
        if "topic" not in a:
            bad.append(f"{cid}.availability without topic")
    if c.get("entity_category") not in (None, "diagnostic"):
        bad.append(f"{cid}: entity_category {c['entity_category']!r} (sensors: diagnostic)")
    if platform == "binary_sensor" and c.get("device_class") not in (None, *BINARY_SENSOR_CLASSES):
        bad.append(f"{cid}: device_class {c['device_class']!r}")
    if platform == "sensor":
        if c.get("state_class") not in (None, *SENSOR_STATE_CLASSES):
            bad.append(f"{cid}: state_class {c['state_class']!r}")
        if c.get("device_class") == "enum" and (
            not c.get("options") or "state_class" in c or "unit_of_measurement" in c
        ):
            bad.append(f"{cid}: an enum sensor needs options and no state_class/unit")
    return bad


def test_discovery_payloads_follow_home_assistants_schema() -> None:
    msgs = discovery_messages("homeassistant", BASE, DEVICE, ["spindle", "pump 2"], "0.1.0")
    assert [t for t, _ in msgs] == [
        "homeassistant/device/edge_agent_gw-ha/config",
        "homeassistant/device/edge_agent_gw-ha_spindle/config",
        "homeassistant/device/edge_agent_gw-ha_pump_2/config",
    ]
    for topic, payload in msgs:
        assert check_device_discovery(topic, payload, "homeassistant") == [], topic
    uids = [c["unique_id"] for _, p in msgs for c in p["components"].values()]
    assert len(uids) == len(set(uids))
    agent, spindle = msgs[0][1], msgs[1][1]
    assert spindle["device"]["via_device"] == agent["device"]["identifiers"][0]
    assert {c["platform"] for c in spindle["components"].values()} == {"binary_sensor", "sensor"}
    assert set(spindle["components"]) == {"anomaly", "sensor_problem", "score", "threshold"}
    assert spindle["components"]["sensor_problem"]["device_class"] == "problem"
    assert agent["components"]["health"]["device_class"] == "problem"
    assert "model_spindle" in agent["components"]
    # the stream's name reaches the template as a JSON string, whatever it holds
    assert '"pump 2"' in msgs[2][1]["components"]["anomaly"]["value_template"]


def test_the_schema_check_catches_what_home_assistant_refuses() -> None:
    (topic, payload), *_ = discovery_messages("homeassistant", BASE, DEVICE, ["s"], "1")
    broken = json.loads(json.dumps(payload))
    del broken["origin"]
    broken["components"]["health"]["colour"] = "red"
    del broken["components"]["verdict"]["unique_id"]
    problems = check_device_discovery(topic, broken, "homeassistant")
    assert "missing origin" in problems
    assert "health.colour unknown for binary_sensor" in problems
    assert "verdict: missing unique_id" in problems
    assert check_device_discovery("homeassistant/sensor/x/config", payload, "homeassistant")


def test_state_body_and_prefix_checks() -> None:
    assert ha_state_body({"last_score": 0.1234567891, "threshold": 0.5}) == {
        "score": 0.123457,
        "threshold": 0.5,
    }
    assert ha_state_body({"last_score": float("nan"), "threshold": None}) == {
        "score": None,
        "threshold": None,
    }
    assert valid_discovery_prefix("ha/site1") == "ha/site1"
    for bad in ("", "ha/#", "ha/+/x", "ha/"):
        with pytest.raises(ConfigError, match="discovery_prefix"):
            valid_discovery_prefix(bad)


def _config(path: Path, broker: Broker, state: Path) -> Path:
    path.write_text(
        f"""
device_id = "{DEVICE}"
state_dir = "{state}"
models_dir = "{MODELS}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
prefix = "{PREFIX}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
[health]
watchdog = false
stall_after_s = 120.0
[homeassistant]
enabled = true
discovery_prefix = "homeassistant"
state_interval_s = 1.0
[[streams]]
name = "spindle"
model = "vibration-ae"
source = {{kind = "synthetic", rate_hz = 200, block = 16}}
"""
    )
    return path


def _json(sub: Subscriber, topic: str) -> Any:
    """The newest message's JSON on `topic` (the test fails if there is none)."""
    msgs = [m for m in sub.messages if m.topic == topic]
    assert msgs, f"nothing on {topic}"
    return msgs[-1].json()


def _pick(section: dict[str, Any], stream: str) -> dict[str, Any]:
    (entry,) = [s for s in section["streams"] if s["stream"] == stream]
    return entry


@pytest.mark.broker
@pytest.mark.slow
def test_agent_publishes_discovery_state_and_goes_unavailable_when_killed(
    tmp_path: Path, broker: Broker
) -> None:
    sub = Subscriber(broker.host, broker.port, "#", client_id="ha-test-all")
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config",
         str(_config(tmp_path / "agent.toml", broker, tmp_path / "state"))],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    agent_cfg = "homeassistant/device/edge_agent_gw-ha/config"
    stream_cfg = "homeassistant/device/edge_agent_gw-ha_spindle/config"
    own_state = f"{BASE}/ha/spindle"
    try:
        assert sub.wait_for(lambda ms: {agent_cfg, stream_cfg} <= {m.topic for m in ms}, 60), (
            tmp_path / "agent.log"
        ).read_text()[-3000:]
        configs = {t: _json(sub, t) for t in (agent_cfg, stream_cfg)}
        for topic, payload in configs.items():
            assert check_device_discovery(topic, payload, "homeassistant") == []
        agent, stream = configs[agent_cfg], configs[stream_cfg]
        comps = {**agent["components"], **stream["components"]}

        # Every state topic an entity reads gets a message from the agent, with the
        # fields its template reads.
        topics = {c["state_topic"] for c in comps.values()}
        assert topics == {
            f"{BASE}/state/health", f"{BASE}/state/models", f"{BASE}/state/alarms", own_state
        }  # fmt: skip
        assert sub.wait_for(
            lambda ms: (
                topics <= {m.topic for m in ms}
                and any(m.topic == own_state and m.json()["score"] is not None for m in ms)
            ),
            60,
        ), sorted({m.topic for m in sub.messages})
        assert _json(sub, own_state)["threshold"] > 0
        assert _json(sub, f"{BASE}/state/health")["verdict"] in comps["verdict"]["options"]
        alarms = _json(sub, f"{BASE}/state/alarms")
        assert isinstance(_pick(alarms, "spindle")["open"], bool)
        assert isinstance(_pick(alarms, "spindle")["sensor_faults"], list)
        models = _json(sub, f"{BASE}/state/models")
        assert isinstance(_pick(models, "spindle")["version"], int)

        # Availability: the birth says what payload_available expects.
        (avail,) = {json.dumps(c["availability"]) for c in comps.values()}
        avail_cfg = json.loads(avail)[0]
        assert avail_cfg["topic"] == f"{BASE}/status"
        assert avail_cfg["value_template"] == "{{ value_json.state }}"
        assert _json(sub, f"{BASE}/status")["state"] == avail_cfg["payload_available"]

        # Home Assistant's birth: everything is sent again.
        before = len([m for m in sub.messages if m.topic == stream_cfg])
        sub.client.publish("homeassistant/status", b"online", qos=1)
        assert sub.wait_for(lambda ms: len([m for m in ms if m.topic == stream_cfg]) > before, 60)
        assert sub.wait_for(lambda ms: len([m for m in ms if m.topic == agent_cfg]) >= 2, 60)

        # SIGKILL: the broker sends the Last Will; the entities become unavailable.
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

        def offline(ms: list[Received]) -> bool:
            last = [m for m in ms if m.topic == f"{BASE}/status"][-1]
            return bool(last.json()["state"] == avail_cfg["payload_not_available"])

        assert sub.wait_for(offline, 60)
        assert _json(sub, f"{BASE}/status")["clean"] is False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
        sub.close()

    # A dashboard (re)starting now gets discovery, the stream's state and "offline" from
    # the broker's retained messages alone.
    late = Subscriber(broker.host, broker.port, "#", client_id="ha-test-late")
    try:
        want = {agent_cfg, stream_cfg, own_state, f"{BASE}/state/alarms", f"{BASE}/status"}
        assert late.wait_for(lambda ms: want <= {m.topic for m in ms if m.retain}, 30)
        assert _json(late, f"{BASE}/status")["state"] == "offline"
    finally:
        late.close()


def test_config_is_off_by_default_and_a_bad_prefix_names_file_and_key() -> None:
    from edge_agent.config import parse_config

    cfg = parse_config({"device_id": "gw"}, source="agent.toml")
    assert cfg.homeassistant.enabled is False
    assert cfg.homeassistant.discovery_prefix == "homeassistant"
    with pytest.raises(ConfigError) as e:
        parse_config(
            {"device_id": "gw", "homeassistant": {"enabled": True, "discovery_prefix": "ha/#"}},
            source="agent.toml",
        )
    assert str(e.value).startswith("agent.toml: homeassistant: discovery_prefix 'ha/#'")
    with pytest.raises(ConfigError, match=r"homeassistant\.state_interval_s"):
        parse_config({"homeassistant": {"state_interval_s": 0}}, source="agent.toml")


class _Outbox:
    """Records what the publisher hands to the reporter (the publisher's logic alone; the
    broker test above runs it against the real reporter)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bool]] = []
        self.handlers: dict[str, Any] = {}

    def publish_raw(self, topic: str, payload: bytes, *, periodic: bool = False) -> int:
        self.sent.append((topic, json.loads(payload), periodic))
        return len(self.sent)

    def subscribe(self, topic_filter: str, handler: Any) -> None:
        self.handlers[topic_filter] = handler


def test_publisher_paces_scores_sends_thresholds_at_once_and_coalesces_ha_births() -> None:
    from edge_agent.reporting.ha_publisher import HomeAssistantPublisher

    now = [100.0]
    box = _Outbox()
    pub = HomeAssistantPublisher(
        box, discovery_prefix="homeassistant", base=BASE, device=DEVICE, streams=["s"],
        version="1", state_interval_s=10.0, clock=lambda: now[0],
    )  # fmt: skip
    pub.attach()
    assert [t for t, _, _ in box.sent] == [
        "homeassistant/device/edge_agent_gw-ha/config",
        "homeassistant/device/edge_agent_gw-ha_s/config",
    ]

    def tick(score: float, threshold: float, dt: float = 1.0) -> list[dict[str, Any]]:
        now[0] += dt
        before = len(box.sent)
        pub.on_status({"streams": [{"name": "s", "last_score": score, "threshold": threshold}]})
        return [b for t, b, periodic in box.sent[before:] if t == f"{BASE}/ha/s" and periodic]

    assert tick(0.1, 0.5) == [{"score": 0.1, "threshold": 0.5}]  # the first at once
    assert tick(0.2, 0.5) == []  # paced
    assert tick(0.3, 0.7) == [{"score": 0.3, "threshold": 0.7}]  # a new threshold at once
    assert tick(0.4, 0.7, dt=10.0) == [{"score": 0.4, "threshold": 0.7}]
    assert tick(0.4, 0.7, dt=30.0) == []  # nothing changed: nothing sent

    births = box.handlers["homeassistant/status"]
    for _ in range(50):
        births("homeassistant/status", b"online")
    births("homeassistant/status", b"offline")
    assert pub.discovery_sent == 1  # nothing on the MQTT thread
    sent = tick(0.4, 0.7)
    assert pub.discovery_sent == 2  # fifty births, one set, at the tick
    assert sent == [{"score": 0.4, "threshold": 0.7}]  # and the state again with it
    tick(0.4, 0.7)
    assert pub.discovery_sent == 2
    pub.on_status({"streams": "garbage"})  # never raises into the agent's tick
