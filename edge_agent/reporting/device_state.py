"""The device's retained state for the fleet view: four sections, each on its own topic.

`<prefix>/<device>/state/health`  verdict and reasons, group, agent version (heartbeat)
`<prefix>/<device>/state/models`  the model serving each stream (family, version, slot,
                                   calibration)
`<prefix>/<device>/state/ota`     update phase, target, last result and its reason
`<prefix>/<device>/state/alarms`  per stream: alarm open or not, active sensor faults

Pure: sections are built from the status snapshot (status.json's dict) and the stream
families; `StateGate` decides which sections to send now. A section goes out when what it
says changed (times and counts inside a reason do not count as a change: "MQTT not
connected for 5m12s" is the same finding a second later), at most once per
`MIN_INTERVAL_S` (a flapping alarm is coalesced), and the health section again every
`HEARTBEAT_S` so a fleet view can tell a silent device from a quiet one. Schemas:
docs/schemas/device_<section>.json.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "HEARTBEAT_S",
    "MIN_INTERVAL_S",
    "SECTIONS",
    "StateGate",
    "build_sections",
    "parse_last_result",
]

SECTIONS = ("health", "models", "ota", "alarms")
HEARTBEAT_S = 300.0  # health again after this long without a change (fleet "last seen")
MIN_INTERVAL_S = 2.0  # one section at most this often; changes in between are coalesced
MAX_REASONS = 10  # a health message stays small however much is wrong
MAX_REASON_CHARS = 300

T = TypeVar("T")

_NUMBER = re.compile(r"\d+(?:[.:]\d+)*")
_RESULT = re.compile(
    r"^(?P<outcome>[a-z][a-z ]*?)(?: from)? v(?P<version>\d+)(?:: (?P<reason>.*))?$"
)


def parse_last_result(text: str) -> dict[str, Any]:
    """`"rolled back v7: alarm rate 0.4 > 0.1"` -> outcome, version, reason (None where
    the text does not say). The updater writes these strings (updates/updater.py)."""
    m = _RESULT.match(text.strip())
    if not m:
        return {"outcome": text.strip() or None, "version": None, "reason": None}
    return {
        "outcome": m.group("outcome"),
        "version": int(m.group("version")),
        "reason": m.group("reason"),
    }


def get(d: Any, key: str, typ: type[T], default: T) -> T:
    """`d[key]` if `d` is a mapping and the value has type `typ`, else `default`."""
    v = d.get(key, default) if isinstance(d, Mapping) else default
    return v if isinstance(v, typ) else default


def _map(d: Any, key: str) -> Mapping[str, Any]:
    v = d.get(key) if isinstance(d, Mapping) else None
    return v if isinstance(v, Mapping) else {}


def _health(
    snap: Mapping[str, Any], group: str, verdict: str, reasons: Sequence[str]
) -> dict[str, Any]:
    return {
        "group": group,
        "verdict": verdict,
        "reasons": [r[:MAX_REASON_CHARS] for r in reasons[:MAX_REASONS]],
        "agent_version": get(snap, "agent_version", str, ""),
        "started_at": snap.get("started_at"),
        "heartbeat_s": HEARTBEAT_S,
    }


def _models(snap: Mapping[str, Any], families: Mapping[str, str]) -> dict[str, Any]:
    sources = get(_map(snap, "ota"), "model_source", dict, {})
    out = []
    for s in get(snap, "streams", list, []):
        name = get(s, "name", str, "")
        model, cal = _map(s, "model"), _map(s, "calibration")
        out.append(
            {
                "stream": name,
                "family": families.get(name, ""),
                "model": get(model, "name", str, ""),
                "version": model.get("version"),
                "slot": str(sources.get(name, "bundled")),
                "calibration": get(cal, "state", str, "none"),
            }
        )
    return {"streams": out}


def _ota(snap: Mapping[str, Any]) -> dict[str, Any]:
    ota = _map(snap, "ota")
    cand = ota.get("candidate") if isinstance(ota.get("candidate"), Mapping) else None
    last = get(ota, "last_result", str, "")
    channel = _map(ota, "channel")
    return {
        "enabled": get(ota, "enabled", bool, False),
        "phase": get(ota, "state", str, "off"),
        "target": None
        if cand is None
        else {"name": cand.get("name"), "version": cand.get("version"), "slot": cand.get("slot")},
        "active_version": ota.get("active_version"),
        "active_slot": ota.get("active_slot"),
        "last_result": last,
        "last": parse_last_result(last) if last else None,
        "note": get(ota, "note", str, "") or get(channel, "note", str, ""),
    }


def _alarms(snap: Mapping[str, Any]) -> dict[str, Any]:
    out = []
    for s in get(snap, "streams", list, []):
        active = get(_map(s, "sensor_health"), "active", list, [])
        faults = sorted(str(a) for a in active)  # "flatline:ch0", "dropout"
        out.append(
            {
                "stream": get(s, "name", str, ""),
                "open": get(s, "alarm_open", bool, False),
                "sensor_faults": faults,
            }
        )
    return {"streams": out}


def build_sections(
    snap: Mapping[str, Any],
    families: Mapping[str, str],
    group: str,
    verdict: str,
    reasons: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Every section's body (without the envelope) from one status snapshot, with the
    verdict and reasons `edge-agent status` would give for it (service/status.assess)."""
    return {
        "health": _health(snap, group, verdict, reasons),
        "models": _models(snap, families),
        "ota": _ota(snap),
        "alarms": _alarms(snap),
    }


def _shape(section: str, body: Mapping[str, Any]) -> str:
    """What counts as a change: the body with numbers inside free text blanked."""
    if section == "health":
        body = {**body, "reasons": [_NUMBER.sub("#", r) for r in body.get("reasons", [])]}
    elif section == "ota":
        body = {**body, "note": _NUMBER.sub("#", str(body.get("note", "")))}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


@dataclass
class StateGate:
    """Which sections are due, given the new bodies and the time (monotonic seconds)."""

    min_interval_s: float = MIN_INTERVAL_S
    heartbeat_s: float = HEARTBEAT_S
    _shapes: dict[str, str] = field(default_factory=dict)
    _sent_at: dict[str, float] = field(default_factory=dict)

    def due(self, sections: Mapping[str, Mapping[str, Any]], now: float) -> list[str]:
        out = []
        for name, body in sections.items():
            shape = _shape(name, body)
            last = self._sent_at.get(name)
            changed = shape != self._shapes.get(name)
            if last is not None and now - last < self.min_interval_s:
                continue  # coalesced: the change goes out when the interval has passed
            beat = name == "health" and last is not None and now - last >= self.heartbeat_s
            if last is None or changed or beat:
                out.append(name)
        return out

    def sent(self, name: str, body: Mapping[str, Any], now: float) -> None:
        self._shapes[name] = _shape(name, body)
        self._sent_at[name] = now

    def forget(self) -> None:
        """Send everything again at the next look (the broker may have lost it)."""
        self._shapes.clear()
        self._sent_at.clear()
