"""The fleet view, pure: retained device messages in, one row per device and totals out.

Input: (topic, payload) pairs read from `<prefix>/+/status` and `<prefix>/+/state/+`
(docs/fleet.md). Nothing here touches the network; `ota/fleet_mqtt.py` reads the broker.
A device is offline when its retained status says so (clean stop or Last Will), or when
nothing it sent is newer than `offline_after_s` (its health heartbeat stopped).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DeviceRow",
    "FleetView",
    "body_ts",
    "build_view",
    "json_object",
    "render_table",
    "split_topic",
]

STATE_SECTIONS = ("health", "models", "ota", "alarms")


def split_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """`edge/gw-01/state/ota` -> ("gw-01", "ota"); `edge/gw-01/status` -> ("gw-01",
    "status"); anything else None."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) == 2 and parts[1] == "status":
        return parts[0], "status"
    if len(parts) == 3 and parts[1] == "state" and parts[2] in STATE_SECTIONS:
        return parts[0], parts[2]
    return None


@dataclass
class DeviceRow:
    device: str
    group: str = ""
    last_seen: float | None = None  # the newest `ts` of its retained messages
    state: str = "unknown"  # online / offline / unknown (status as retained)
    offline: bool = False
    verdict: str = "?"
    reasons: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # family -> "v3" (or "v3,v4")
    ota_phase: str = "?"
    ota_target: int | None = None
    last_error: str = ""
    alarms_open: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "group": self.group,
            "last_seen": self.last_seen,
            "state": self.state,
            "offline": self.offline,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "versions": self.versions,
            "ota_phase": self.ota_phase,
            "ota_target": self.ota_target,
            "last_error": self.last_error,
            "alarms_open": self.alarms_open,
        }


@dataclass(frozen=True)
class FleetView:
    rows: list[DeviceRow]
    now: float

    def totals(self) -> dict[str, Any]:
        online = [r for r in self.rows if not r.offline]
        versions: Counter[str] = Counter()
        for r in online:
            for fam, v in r.versions.items():
                versions[f"{fam} {v}"] += 1
        return {
            "devices": len(self.rows),
            "online": len(online),
            "offline": len(self.rows) - len(online),
            "verdicts": dict(Counter(r.verdict for r in online)),
            "versions": dict(sorted(versions.items())),
            "ota_phases": dict(Counter(r.ota_phase for r in online)),
            "alarms_open": sum(len(r.alarms_open) for r in online),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "devices": [r.to_json() for r in self.rows],
            "totals": self.totals(),
        }


def json_object(payload: bytes) -> Mapping[str, Any] | None:
    """A retained payload's JSON object; None when cleared, not JSON, or not an object."""
    if not payload:
        return None  # a cleared retained message
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, Mapping) else None


def body_ts(body: Mapping[str, Any]) -> float | None:
    t = body.get("ts")
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def _apply(row: DeviceRow, kind: str, body: Mapping[str, Any]) -> None:
    if kind == "status":
        row.state = str(body.get("state", "unknown"))
    elif kind == "health":
        row.group = str(body.get("group", row.group))
        row.verdict = str(body.get("verdict", "?"))
        reasons = body.get("reasons")
        row.reasons = [str(r) for r in reasons] if isinstance(reasons, list) else []
    elif kind == "models":
        fams: dict[str, list[str]] = {}
        for s in body.get("streams") or []:
            if isinstance(s, Mapping):
                fam = str(s.get("family") or s.get("model") or "?")
                v = f"v{s.get('version')}"
                fams.setdefault(fam, [])
                if v not in fams[fam]:
                    fams[fam].append(v)
        row.versions = {f: ",".join(vs) for f, vs in sorted(fams.items())}
    elif kind == "ota":
        row.ota_phase = str(body.get("phase", "?"))
        target = body.get("target")
        row.ota_target = target.get("version") if isinstance(target, Mapping) else None
        last = body.get("last")
        if isinstance(last, Mapping) and last.get("outcome") not in (None, "committed"):
            row.last_error = f"{last.get('outcome')} v{last.get('version')}: {last.get('reason')}"
        else:
            row.last_error = ""
    elif kind == "alarms":
        row.alarms_open = [
            str(s.get("stream"))
            for s in body.get("streams") or []
            if isinstance(s, Mapping) and s.get("open") is True
        ]


def build_view(
    prefix: str,
    messages: Iterable[tuple[str, bytes]],
    now: float,
    offline_after_s: float,
    group: str | None = None,
) -> FleetView:
    """Rows sorted by device id; with `group`, only devices whose health names it."""
    rows: dict[str, DeviceRow] = {}
    for topic, payload in messages:
        where = split_topic(prefix, topic)
        body = json_object(payload)
        if where is None or body is None:
            continue
        device, kind = where
        row = rows.setdefault(device, DeviceRow(device))
        _apply(row, kind, body)
        t = body_ts(body)
        if t is not None and (row.last_seen is None or t > row.last_seen):
            row.last_seen = t
    for r in rows.values():
        silent = r.last_seen is None or now - r.last_seen > offline_after_s
        r.offline = r.state == "offline" or silent
    out = [r for _, r in sorted(rows.items()) if group is None or r.group == group]
    return FleetView(out, now)


def _ago(now: float, t: float | None) -> str:
    if t is None:
        return "never"
    s = max(0.0, now - t)
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    if s < 172800:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


def render_table(view: FleetView) -> str:
    """One line per device, then the totals (what `edge-ota fleet status` prints)."""
    head = ("DEVICE", "GROUP", "LAST SEEN", "STATE", "HEALTH", "SERVING", "OTA", "LAST ERROR")
    lines = [head]
    for r in view.rows:
        serving = " ".join(f"{f}={v}" for f, v in r.versions.items()) or "-"
        ota = r.ota_phase + (f"->v{r.ota_target}" if r.ota_target is not None else "")
        health = r.verdict + (f" ({r.reasons[0]})" if r.reasons else "")
        lines.append(
            (
                r.device,
                r.group or "-",
                _ago(view.now, r.last_seen),
                "offline" if r.offline else "online",
                health[:60],
                serving,
                ota,
                r.last_error[:60] or "-",
            )
        )
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines
    ]
    t = view.totals()
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(t["verdicts"].items())) or "-"
    versions = ", ".join(f"{v}: {n}" for v, n in t["versions"].items()) or "-"
    phases = ", ".join(f"{p} {n}" for p, n in sorted(t["ota_phases"].items())) or "-"
    text.append(
        f"{t['devices']} devices: {t['online']} online ({verdicts}), {t['offline']} offline; "
        f"serving {versions}; ota {phases}; {t['alarms_open']} alarm(s) open"
    )
    return "\n".join(text)
