"""What a rollout sees of each device, pure: retained messages in, one `Observation` out.

Built from the same retained topics as the fleet view (`<prefix>/<device>/status` and
`state/{health,models,ota}`, docs/fleet.md), with the fleet view's own offline rule
(`ota.fleet.build_view`), plus what a rollout needs that the view's rows flatten: each
family's serving versions as numbers and the last OTA result taken apart
(docs/schemas/device_ota.json).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ota.fleet import body_ts, build_view, json_object, split_topic

__all__ = [
    "FINAL_OUTCOMES",
    "IN_PROGRESS",
    "REQUIRED_SECTIONS",
    "Observation",
    "final_failure",
    "observe",
]

# OTA phases of an update under way (device side: edge_agent/updates/updater.py)
IN_PROGRESS = frozenset(
    {"announced", "downloading", "verifying", "validating", "shadow", "promoted"}
)
# Last results that end a target's story on a device: it will not try that version again.
FINAL_OUTCOMES = frozenset({"rejected", "failed", "rolled back"})
# ... except a failed transfer, which the device retries with a backoff (the wave deadline
# catches a device that never gets it).
TRANSIENT_ERRORS = ("DownloadError", "TransferTooSlowError")
_GIVEN_UP = re.compile(r"^v(\d+) given up after")
# What a rollout judges a device by. Each is its own retained publish: after a broker
# restart without persistence they come back one by one, so a device missing one is
# unknown for that poll (nothing is judged), never "serves nothing" or "offline".
REQUIRED_SECTIONS = ("status", "health", "models", "ota")


@dataclass(frozen=True)
class Observation:
    device: str
    group: str = ""
    online: bool = False
    offline_why: str = ""
    serving: dict[str, tuple[int | None, ...]] = field(default_factory=dict)  # family -> versions
    phase: str = "?"
    ota_target: int | None = None
    last_result: str = ""
    last_outcome: str | None = None
    last_version: int | None = None
    last_reason: str | None = None
    ota_ts: float | None = None  # when the device stored its retained OTA state
    missing: tuple[str, ...] = ()  # REQUIRED_SECTIONS not retained (yet)

    @property
    def complete(self) -> bool:
        """Every section a rollout judges by is there: only then is it judged."""
        return not self.missing


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def observe(
    prefix: str, messages: Iterable[tuple[str, bytes]], now: float, offline_after_s: float
) -> dict[str, Observation]:
    """One observation per device that has any retained state."""
    msgs = list(messages)
    view = build_view(prefix, msgs, now, offline_after_s)
    models: dict[str, Mapping[str, Any]] = {}
    ota: dict[str, Mapping[str, Any]] = {}
    seen: dict[str, set[str]] = {}
    for topic, payload in msgs:
        where = split_topic(prefix, topic)
        body = json_object(payload)
        if where is None or body is None:
            continue
        seen.setdefault(where[0], set()).add(where[1])
        if where[1] == "models":
            models[where[0]] = body
        elif where[1] == "ota":
            ota[where[0]] = body
    out: dict[str, Observation] = {}
    for row in view.rows:
        serving: dict[str, list[int | None]] = {}
        for s in (models.get(row.device) or {}).get("streams") or []:
            if isinstance(s, Mapping):
                fam = str(s.get("family") or s.get("model") or "")
                serving.setdefault(fam, []).append(_int(s.get("version")))
        o = ota.get(row.device) or {}
        target = o.get("target")
        last = o.get("last")
        last = last if isinstance(last, Mapping) else {}
        why = "its status says offline" if row.state == "offline" else (
            f"nothing from it for over {offline_after_s:g} s"
        )  # fmt: skip
        out[row.device] = Observation(
            device=row.device,
            group=row.group,
            online=not row.offline,
            offline_why=why if row.offline else "",
            serving={f: tuple(v) for f, v in serving.items()},
            phase=str(o.get("phase", "?")),
            ota_target=_int(target.get("version")) if isinstance(target, Mapping) else None,
            last_result=str(o.get("last_result") or ""),
            last_outcome=str(last["outcome"]) if last.get("outcome") is not None else None,
            last_version=_int(last.get("version")),
            last_reason=str(last["reason"]) if last.get("reason") is not None else None,
            ota_ts=body_ts(o),
            missing=tuple(x for x in REQUIRED_SECTIONS if x not in seen.get(row.device, ())),
        )
    return out


def final_failure(o: Observation, version: int, directed_at: float) -> str:
    """Why the device will not serve `version` (its own words), or "" if it has not said
    so. A refusal before any download (a version not above the installed one, no stream
    of the family) is in the last result; older agents changed only
    the phase: that counts when the device stored it after it was directed."""
    if o.last_version == version and o.last_outcome in FINAL_OUTCOMES:
        reason = o.last_reason or ""
        if o.last_outcome == "failed" and reason.startswith(TRANSIENT_ERRORS):
            return ""
        return f"{o.last_outcome} v{version}: {reason or '(no reason given)'}"
    m = _GIVEN_UP.match(o.last_result)
    if m and int(m.group(1)) == version:
        return o.last_result
    refused_now = o.ota_ts is not None and o.ota_ts >= directed_at
    if o.phase == "rejected" and o.ota_target is None and refused_now:
        return (
            f"rejected v{version} before downloading it (the device's edge/{o.device}/ota/"
            "state events say why: e.g. not above its installed version)"
        )
    return ""
