"""The outbox's part of the status snapshot: what is wrong with storage, in words.

Pure: takes `OutboxHealth` and returns the JSON-ready fields the reporter adds to
`snapshot()["outbox"]`. `problems` are the DEGRADED reasons `edge-agent status` shows,
e.g. "outbox: disk full since 12:03:07, 41 records held in memory".
"""

from __future__ import annotations

import time
from typing import Any

from edge_agent.reporting.outbox_types import OutboxHealth

__all__ = ["outbox_health"]


# What a technician can do about each storage fault (outbox_db.classify's names).
FIXES = {
    "disk full": "free space on the state dir's filesystem",
    "database locked": "another process holds outbox.db for writing (sqlite3, a backup): close it",
    "permission denied": "give the state dir back to the agent's user (chown -R)",
    "I/O error": "check the storage device (dmesg)",
}


# A writer step this long means the state disk hangs or is very slow (no error, so no
# fault): a DEGRADED reason. Appenders stopped waiting for it long before
# (outbox.WRITER_STALLED_S); records wait in the memory spill meanwhile.
DISK_HUNG_S = 10.0


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def outbox_health(h: OutboxHealth, refused: dict[str, int]) -> dict[str, Any]:
    """Fields: fault (str|None), since (unix s|None), fault_detail, held_in_memory,
    held_bytes, dropped_by_kind (memory-spill drops since start), refused_by_kind
    (records over the size limit), moved_aside ({path, at, reason, records}|None),
    writer_busy_s (how long the writer has been in its current step; 0 when idle),
    problems (list of reasons for a DEGRADED verdict)."""
    problems: list[str] = []
    if h.fault is not None:
        since = f" since {_clock(h.since)}" if h.since is not None else ""
        fix = FIXES.get(h.fault)
        problems.append(
            f"outbox: {h.fault}{since}, {h.held} record(s) held in memory ({h.detail})"
            + (f"; {fix}" if fix else "")
        )
    if h.fault is None and h.writer_busy_s >= DISK_HUNG_S:
        problems.append(
            f"outbox: the state disk has not finished a write for {h.writer_busy_s:.0f} s "
            f"(hung or very slow storage), {h.held} record(s) held in memory; " + FIXES["I/O error"]
        )
    if h.seq_problem:
        problems.append(f"outbox: {h.seq_problem}")
    lost = {k: n for k, n in h.dropped_in_memory.items() if n}
    if lost:
        problems.append(
            "outbox: memory spill overflowed while storage failed, dropped "
            + ", ".join(f"{n} {k}" for k, n in sorted(lost.items()))
        )
    moved = None
    if h.moved_aside is not None:
        m = h.moved_aside
        moved = {"path": m.path, "at": m.at, "reason": m.reason, "records": m.records}
        what = "an unknown number of" if m.records is None else str(m.records)
        problems.append(
            f"outbox: the database was corrupt ({m.reason}) and was moved aside to {m.path} "
            f"at {_clock(m.at)}: {what} undelivered record(s) in it were lost"
        )
    return {
        "fault": h.fault,
        "since": h.since,
        "fault_detail": h.detail,
        "held_in_memory": h.held,
        "held_bytes": h.held_bytes,
        "dropped_by_kind": dict(h.dropped_in_memory),
        "refused_by_kind": {k: n for k, n in refused.items() if n},
        "moved_aside": moved,
        "writer_busy_s": round(h.writer_busy_s, 3),
        "problems": problems,
    }
