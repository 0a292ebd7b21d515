"""The outbox's value types: record kinds and their drop order, records, stats, health."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from edge_agent.reporting.outbox_db import MovedAside

__all__ = ["DROP_ORDER", "LANE", "Kind", "OutboxHealth", "OutboxStats", "Record"]


class Kind(str, enum.Enum):
    EVENT = "event"
    TELEMETRY = "telemetry"
    OTA = "ota"
    STATUS = "status"


# When the budget is reached, the oldest record of the first kind that has any goes
# first. Status is superseded by the next birth anyway; events are what the device is for.
DROP_ORDER: tuple[Kind, ...] = (Kind.TELEMETRY, Kind.STATUS, Kind.OTA, Kind.EVENT)

# Status goes out first after a (re)connect: lane 0 drains before lane 1.
LANE = {Kind.STATUS: 0, Kind.EVENT: 1, Kind.TELEMETRY: 1, Kind.OTA: 1}


@dataclass(frozen=True)
class Record:
    id: int
    seq: int
    kind: Kind
    topic: str
    payload: bytes
    retain: bool
    created: float


@dataclass(frozen=True)
class OutboxHealth:
    """Whether the outbox can write. `fault` is a short name ('disk full', 'database
    locked', 'I/O error', ...) or None; `since` is when it began (unix s); `held` records
    (`held_bytes`) wait in memory; `dropped_in_memory` counts spill drops per kind since
    start; `moved_aside` is set when a corrupt database was moved aside at start;
    `seq_problem` says why the seq reservation file cannot be written (or "");
    `writer_busy_s` is how long the writer has been inside one store/checkpoint step
    (0 when idle: a value growing past seconds means storage hangs)."""

    fault: str | None
    since: float | None
    detail: str
    held: int
    held_bytes: int
    dropped_in_memory: dict[str, int]
    moved_aside: MovedAside | None
    seq_problem: str = ""
    writer_busy_s: float = 0.0


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_created: float | None
    drops: dict[str, int]
    path: str
    health: OutboxHealth | None = field(default=None)
    groups: int = 0  # group commits since start (one transaction and one fsync each)

    def oldest_age_s(self, now: float) -> float | None:
        return None if self.oldest_created is None else max(0.0, now - self.oldest_created)
