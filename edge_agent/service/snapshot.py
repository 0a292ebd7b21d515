"""The agent's status snapshot (status.json, format in docs/status.md), built from parts.

Each part gives its own section; the typed ones (`HealthSection`, the supervisor's
`ComponentStatus`) turn themselves into JSON. Nothing here reads files or sockets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.service.supervisor import ComponentStatus

__all__ = ["HealthSection", "SnapshotParts", "StreamView", "build_snapshot"]


class StreamView(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class HealthSection:
    """`health` in status.json. `live`: every supervised loop turns (what WATCHDOG=1
    means); `hints`: why the agent is not fully fit (DEGRADED reasons)."""

    live: bool
    ready: bool
    hints: tuple[str, ...]
    watchdog: bool
    notify: str

    def to_json(self) -> dict[str, Any]:
        return {
            "live": self.live,
            "ready": self.ready,
            "verdict_hints": list(self.hints),
            "watchdog": self.watchdog,
            "notify": self.notify,
        }


@dataclass(frozen=True)
class SnapshotParts:
    device_id: str
    started_at: float
    running: bool
    stop_reason: str
    profile: dict[str, str] | None
    health: HealthSection
    streams: Sequence[StreamView]
    components: Sequence[ComponentStatus]
    events_total: int
    sensor_events_total: int
    windows_total: int
    errors: list[dict[str, Any]]
    ota: dict[str, Any]
    reporting: dict[str, Any] | None  # the reporter's `mqtt` and `outbox` sections


def build_snapshot(p: SnapshotParts) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "v": 1,
        "written_at": time.time(),
        "pid": os.getpid(),
        "started_at": p.started_at,
        "running": p.running,
        "ready": p.health.ready,
        "stop_reason": p.stop_reason if not p.running else "",
        "agent_version": __version__,
        "device_id": p.device_id,
        "profile": p.profile,
        "health": p.health.to_json(),
        "supervisor": {"components": [c.to_json() for c in p.components]},
        "streams": [s.snapshot() for s in p.streams],
        "events_total": p.events_total,
        "sensor_events_total": p.sensor_events_total,
        "windows_total": p.windows_total,
        "errors": p.errors,
        "ota": p.ota,
    }
    if p.reporting is not None:
        snap.update(p.reporting)
    else:
        snap["mqtt"] = {"enabled": False}
    return snap
