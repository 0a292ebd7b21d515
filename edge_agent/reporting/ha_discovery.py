"""Home Assistant MQTT discovery payloads (device-based discovery, docs/homeassistant.md).

Pure: builds `(topic, payload)` pairs from the device id, the agent's topic base and the
stream names; nothing here touches the network. One Home Assistant device for the agent
(health problem, health verdict, agent version, each stream's model version) and one per
stream, linked to it with `via_device` (anomaly, sensor problem, score, threshold).

Where each entity reads its state (all retained, so a restarted Home Assistant or
dashboard recovers without waiting for the next change):
- `<base>/state/health`, `<base>/state/models`, `<base>/state/alarms`: the device's
  retained state sections (reporting/device_state.py, docs/fleet.md);
- `<base>/ha/<stream>`: `{"score": float|null, "threshold": float}` (ha_state_body),
  published by the Home Assistant publisher, at most every `state_interval_s`;
- availability from `<base>/status` (`state` is "online" in the birth, "offline" in the
  clean stop and in the Last Will the broker sends when the agent dies).

Payload keys are Home Assistant's full names (`device`, `origin`, `components`,
`platform`), which it accepts as well as the abbreviations.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from edge_agent.errors import ConfigError

__all__ = [
    "DEFAULT_DISCOVERY_PREFIX",
    "discovery_messages",
    "discovery_topic",
    "ha_state_body",
    "ha_state_topic",
    "node_id",
    "valid_discovery_prefix",
]

DEFAULT_DISCOVERY_PREFIX = "homeassistant"
ORIGIN_URL = "https://github.com/edge-agent/edge-agent"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def node_id(*parts: str) -> str:
    """A discovery object id / unique id part: only [a-zA-Z0-9_-] (Home Assistant's rule);
    other characters become '_'."""
    return "_".join(_UNSAFE.sub("_", p) for p in parts)


def valid_discovery_prefix(prefix: str) -> str:
    """The prefix as given; ConfigError when it cannot be a topic prefix."""
    if not prefix or any(c in prefix for c in "+#\x00") or prefix.endswith("/"):
        raise ConfigError(
            f"discovery_prefix {prefix!r}: must be a non-empty topic without "
            "'+', '#' or a trailing '/' (Home Assistant's default is 'homeassistant')"
        )
    return prefix


def discovery_topic(prefix: str, device: str, stream: str | None = None) -> str:
    """`<prefix>/device/<object_id>/config`: one per Home Assistant device."""
    obj = node_id("edge_agent", device) if stream is None else node_id("edge_agent", device, stream)
    return f"{prefix}/device/{obj}/config"


def ha_state_topic(base: str, stream: str) -> str:
    return f"{base}/ha/{stream}"


def ha_state_body(stream_snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """`{"score", "threshold"}` from one stream's status snapshot; a missing or non-finite
    value is null (Home Assistant then shows the sensor as unknown)."""

    def num(v: Any) -> float | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return round(float(v), 6) if ok else None

    return {
        "score": num(stream_snapshot.get("last_score")),
        "threshold": num(stream_snapshot.get("threshold")),
    }


def _pick(stream: str, field: str) -> str:
    """Jinja: the field of this stream's entry in a section's `streams` list."""
    name = json.dumps(stream)
    pick = f"selectattr('stream', 'equalto', {name})"
    return f"value_json.streams | {pick} | map(attribute='{field}')"


def _availability(base: str) -> list[dict[str, str]]:
    return [
        {
            "topic": f"{base}/status",
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]


def _common(base: str, uid: str, name: str) -> dict[str, Any]:
    return {"unique_id": uid, "name": name, "availability": _availability(base), "qos": 1}


def _agent_device(device: str, version: str) -> dict[str, Any]:
    return {
        "identifiers": [node_id("edge_agent", device)],
        "name": f"edge-agent {device}",
        "manufacturer": "edge-agent",
        "model": "edge-agent gateway",
        "sw_version": version,
    }


def _origin(version: str) -> dict[str, str]:
    return {"name": "edge-agent", "sw_version": version, "support_url": ORIGIN_URL}


def _agent_message(
    prefix: str, base: str, device: str, streams: Sequence[str], version: str
) -> tuple[str, dict[str, Any]]:
    uid = node_id("edge_agent", device)
    health = f"{base}/state/health"
    components: dict[str, dict[str, Any]] = {
        "health": {
            "platform": "binary_sensor",
            **_common(base, f"{uid}_health", "Health problem"),
            "device_class": "problem",
            "state_topic": health,
            "value_template": "{{ 'OFF' if value_json.verdict == 'OK' else 'ON' }}",
            "json_attributes_topic": health,
            "json_attributes_template": (
                "{{ {'verdict': value_json.verdict, 'reasons': value_json.reasons} | tojson }}"
            ),
        },
        "verdict": {
            "platform": "sensor",
            **_common(base, f"{uid}_verdict", "Health"),
            "device_class": "enum",
            "options": ["OK", "DEGRADED", "DOWN"],
            "state_topic": health,
            "value_template": "{{ value_json.verdict }}",
        },
        "agent_version": {
            "platform": "sensor",
            **_common(base, f"{uid}_agent_version", "Agent version"),
            "entity_category": "diagnostic",
            "state_topic": health,
            "value_template": "{{ value_json.agent_version }}",
        },
    }
    for s in streams:
        sid = node_id(s)
        components[f"model_{sid}"] = {
            "platform": "sensor",
            **_common(base, f"{uid}_{sid}_model_version", f"{s} model version"),
            "entity_category": "diagnostic",
            "state_topic": f"{base}/state/models",
            "value_template": "{{ " + _pick(s, "version") + " | first | default(None) }}",
        }
    payload = {
        "device": _agent_device(device, version),
        "origin": _origin(version),
        "components": components,
    }
    return discovery_topic(prefix, device), payload


def _stream_message(
    prefix: str, base: str, device: str, stream: str, version: str
) -> tuple[str, dict[str, Any]]:
    uid = node_id("edge_agent", device, stream)
    alarms = f"{base}/state/alarms"
    own = ha_state_topic(base, stream)
    open_now = _pick(stream, "open") + " | select | list"
    faulty = _pick(stream, "sensor_faults") + " | select | list"
    components: dict[str, dict[str, Any]] = {
        "anomaly": {
            "platform": "binary_sensor",
            **_common(base, f"{uid}_anomaly", "Anomaly"),
            "state_topic": alarms,
            "value_template": "{{ 'ON' if (" + open_now + ") else 'OFF' }}",
        },
        "sensor_problem": {
            "platform": "binary_sensor",
            **_common(base, f"{uid}_sensor_problem", "Sensor problem"),
            "device_class": "problem",
            "entity_category": "diagnostic",
            "state_topic": alarms,
            "value_template": "{{ 'ON' if (" + faulty + ") else 'OFF' }}",
        },
        "score": {
            "platform": "sensor",
            **_common(base, f"{uid}_score", "Anomaly score"),
            "state_class": "measurement",
            "suggested_display_precision": 4,
            "state_topic": own,
            "value_template": "{{ value_json.score }}",
        },
        "threshold": {
            "platform": "sensor",
            **_common(base, f"{uid}_threshold", "Alarm threshold"),
            "entity_category": "diagnostic",
            "suggested_display_precision": 4,
            "state_topic": own,
            "value_template": "{{ value_json.threshold }}",
        },
    }
    payload = {
        "device": {
            "identifiers": [uid],
            "name": f"{device} {stream}",
            "manufacturer": "edge-agent",
            "model": "edge-agent stream",
            "sw_version": version,
            "via_device": node_id("edge_agent", device),
        },
        "origin": _origin(version),
        "components": components,
    }
    return discovery_topic(prefix, device, stream), payload


def discovery_messages(
    prefix: str, base: str, device: str, streams: Sequence[str], version: str
) -> list[tuple[str, dict[str, Any]]]:
    """Every discovery config, agent first: `[(topic, payload), ...]`. `base` is the
    agent's topic base `<mqtt.prefix>/<device>`; `version` the agent's version."""
    out = [_agent_message(prefix, base, device, streams, version)]
    out += [_stream_message(prefix, base, device, s, version) for s in streams]
    return out
