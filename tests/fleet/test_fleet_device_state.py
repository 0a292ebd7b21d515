"""Device state sections (pure): what they say, when they go out, and their schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from edge_agent.reporting.device_state import (
    StateGate,
    build_sections,
    parse_last_result,
)
from edge_agent.reporting.payloads import envelope

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def _snap(version: int = 1, alarm: bool = False, last_result: str = "") -> dict[str, Any]:
    return {
        "v": 1,
        "agent_version": "0.1.0",
        "started_at": 1000.0,
        "streams": [
            {
                "name": "pump",
                "alarm_open": alarm,
                "model": {"name": "vibration-ae-int8-onnx", "version": version},
                "calibration": {"state": "loaded", "error": ""},
                "sensor_health": {"active": ["flatline:ch1"]},
            }
        ],
        "ota": {
            "enabled": True,
            "state": "shadow",
            "candidate": {"name": "vibration-ae", "version": version + 1, "attempt": 1},
            "active_version": version,
            "active_slot": "a",
            "last_result": last_result,
            "model_source": {"pump": "slot a"},
        },
    }


def _sections(snap: dict[str, Any], reasons: tuple[str, ...] = ()) -> dict[str, Any]:
    verdict = "DEGRADED" if reasons else "OK"
    return build_sections(snap, {"pump": "vibration-ae"}, "line-3", verdict, reasons)


def test_sections_say_model_family_version_slot_calibration_ota_and_alarms() -> None:
    s = _sections(_snap(7, alarm=True, last_result="rolled back v8: alarm rate 0.4 > 0.1"))
    assert s["health"]["group"] == "line-3"
    assert s["models"]["streams"] == [
        {
            "stream": "pump",
            "family": "vibration-ae",
            "model": "vibration-ae-int8-onnx",
            "version": 7,
            "slot": "slot a",
            "calibration": "loaded",
        }
    ]
    assert s["ota"]["phase"] == "shadow"
    assert s["ota"]["target"]["version"] == 8
    assert s["ota"]["last"] == {
        "outcome": "rolled back",
        "version": 8,
        "reason": "alarm rate 0.4 > 0.1",
    }
    assert s["alarms"]["streams"] == [
        {"stream": "pump", "open": True, "sensor_faults": ["flatline:ch1"]}
    ]


def test_every_section_validates_against_its_schema_in_the_envelope() -> None:
    s = _sections(_snap(last_result="committed v2"), ("outbox: disk full since 12:03:07",))
    for name, body in s.items():
        schema = json.loads((SCHEMAS / f"device_{name}.json").read_text())
        jsonschema.validate(envelope("gw-01", 5, 1e9, body), schema)
    empty = build_sections({}, {}, "default", "DOWN", ("never ran",))
    for name, body in empty.items():
        schema = json.loads((SCHEMAS / f"device_{name}.json").read_text())
        jsonschema.validate(envelope("gw-01", 6, 1e9, body), schema)


def test_last_result_parsed_for_each_wording_the_updater_uses() -> None:
    assert parse_last_result("committed v7") == {
        "outcome": "committed",
        "version": 7,
        "reason": None,
    }
    assert parse_last_result("rolled back from v3: manual")["outcome"] == "rolled back"
    assert parse_last_result("failed v9: download: timed out")["reason"] == "download: timed out"
    assert parse_last_result("installed")["outcome"] == "installed"


def test_first_look_sends_all_then_only_what_changed() -> None:
    g = StateGate(min_interval_s=2.0, heartbeat_s=300.0)
    first = _sections(_snap(1))
    assert g.due(first, 0.0) == ["health", "models", "ota", "alarms"]
    for name, body in first.items():
        g.sent(name, body, 0.0)
    assert g.due(_sections(_snap(1)), 5.0) == []
    assert g.due(_sections(_snap(1, alarm=True)), 6.0) == ["alarms"]
    assert "models" in g.due(_sections(_snap(7)), 7.0)


def test_numbers_inside_reasons_are_not_a_change_but_a_new_reason_is() -> None:
    g = StateGate(min_interval_s=2.0, heartbeat_s=300.0)
    a = _sections(_snap(), ("MQTT not connected to 10.0.0.1:1883 for 5m12s",))
    g.sent("health", a["health"], 0.0)
    b = _sections(_snap(), ("MQTT not connected to 10.0.0.1:1883 for 5m13s",))
    assert "health" not in g.due(b, 10.0)
    c = _sections(_snap(), ("MQTT not connected for 5m13s", "outbox: disk full"))
    assert "health" in g.due(c, 11.0)


def test_changes_within_the_minimum_interval_are_coalesced_not_lost() -> None:
    g = StateGate(min_interval_s=2.0, heartbeat_s=300.0)
    g.sent("alarms", _sections(_snap())["alarms"], 0.0)
    flapping = _sections(_snap(alarm=True))
    assert "alarms" not in g.due(flapping, 0.5)  # too soon: held back
    assert "alarms" in g.due(flapping, 2.0)  # ... and sent once the interval passed


def test_health_is_sent_again_as_a_heartbeat_and_nothing_else_is() -> None:
    g = StateGate(min_interval_s=2.0, heartbeat_s=300.0)
    s = _sections(_snap())
    for name, body in s.items():
        g.sent(name, body, 0.0)
    assert g.due(s, 299.0) == []
    assert g.due(s, 300.0) == ["health"]


def test_forget_sends_everything_again() -> None:
    g = StateGate()
    s = _sections(_snap())
    for name, body in s.items():
        g.sent(name, body, 0.0)
    g.forget()
    assert g.due(s, 0.5) == ["health", "models", "ota", "alarms"]
