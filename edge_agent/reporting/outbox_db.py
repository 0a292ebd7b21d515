"""The outbox's SQLite file: opening it with our settings, and naming what went wrong.

Only a database SQLite itself calls corrupt (SQLITE_CORRUPT, SQLITE_NOTADB, or a failed
`quick_check`) is moved aside. A locked database, a full disk or an I/O error is a
*fault*: transient, waited for and retried, never a reason to give up the queue.

Disk use: the connection never checkpoints by itself (`wal_autocheckpoint=0`, so no
commit, and in particular no delete, pays for a checkpoint's fsyncs); the outbox's writer
checkpoints (TRUNCATE) whenever the WAL passes `CHECKPOINT_WAL_BYTES`, and
`journal_size_limit` caps what a reset WAL keeps. See docs/adr/0003-outbox-semantics.md.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fsutil import fsync_dir
from edge_agent.reporting.spill import Held

__all__ = [
    "BUSY_TIMEOUT_S",
    "CHECKPOINT_WAL_BYTES",
    "SCHEMA",
    "GroupResult",
    "MovedAside",
    "checkpoint",
    "classify",
    "connect",
    "count_records",
    "counter",
    "delete_where",
    "fsync_wal",
    "is_corrupt",
    "move_aside",
    "oldest_created",
    "rollback",
    "store_group",
    "wal_bytes",
]

log = logging.getLogger(__name__)

# How long one statement waits for another process's lock before it counts as a fault
# (the writer retries by itself, so a short wait keeps appends from stalling).
BUSY_TIMEOUT_S = 0.25
# The writer checkpoints once the WAL is this large; a reset WAL is truncated to it.
CHECKPOINT_WAL_BYTES = 256 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    lane INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_lane ON records(lane, id);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class MovedAside:
    """A corrupt outbox that was moved aside: where to, when (unix s), why, and how many
    records it held (None when it could not even be counted)."""

    path: str
    at: float
    reason: str
    records: int | None


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the outbox with our settings, check it, make sure the schema is
    there. Raises sqlite3.Error (use `is_corrupt`/`classify` on it) or OSError."""
    db = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
    )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # Commits do not fsync; the outbox fsyncs the WAL itself, outside its locks,
        # when sync = "always" (see Outbox).
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA journal_size_limit={CHECKPOINT_WAL_BYTES}")
        ok = db.execute("PRAGMA quick_check").fetchone()
        if ok is None or ok[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {ok[0] if ok else 'no answer'}")
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'counters'").fetchone() is None:
            db.executescript(SCHEMA)  # writes: only when the schema is missing
    except BaseException:
        db.close()
        raise
    return db


def is_corrupt(e: BaseException) -> bool:
    """True only for errors that say the file itself is damaged."""
    if not isinstance(e, sqlite3.DatabaseError):
        return False
    name = getattr(e, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    # quick_check failures are raised by `connect` as plain DatabaseErrors.
    return not name and str(e).startswith("quick_check")


def classify(e: BaseException) -> str:  # noqa: PLR0911 - one return per cause
    """A short name for a storage fault: 'database locked', 'disk full', 'I/O error', ..."""
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return "database locked"
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "disk full"
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "disk full"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "permission denied"
        return "I/O error"
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")):
        return "permission denied"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or "i/o" in text:
        return "I/O error"
    return "storage error"


def count_records(path: Path) -> int | None:
    """How many records a (possibly damaged) outbox holds, or None if that is unreadable."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            row = db.execute("SELECT COUNT(*) FROM records").fetchone()
            return None if row is None else int(row[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None


def move_aside(path: Path, now: float, reason: str) -> MovedAside:
    """Rename a corrupt outbox (with its -wal/-shm) to `<name>.corrupt-<unix time>`."""
    records = count_records(path)
    aside = path.with_name(f"{path.name}.corrupt-{now:.0f}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.replace(Path(f"{aside}{suffix}"))
    fsync_dir(path.parent)
    return MovedAside(str(aside), now, reason, records)


def wal_bytes(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except OSError:
        return 0


def fsync_wal(path: Path) -> None:
    """Make every committed WAL frame durable (what synchronous=FULL does at each commit,
    here done once per group and outside the outbox's locks). Without a WAL (a filesystem
    where SQLite could not use one) the database file itself is fsync'd. Raises OSError."""
    try:
        fd = os.open(f"{path}-wal", os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint(db: sqlite3.Connection) -> bool:
    """Copy the WAL into the database and truncate it; False if a reader kept it (the
    next checkpoint tries again). Raises sqlite3.Error on a storage fault."""
    row = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return row is not None and int(row[0]) == 0


# -- the statements the outbox runs ------------------------------------------------------


@dataclass(frozen=True)
class GroupResult:
    """After a stored group: the queue's depth and accounted bytes, and the records the
    disk budget dropped (per kind)."""

    depth: int
    nbytes: int
    drops: Counter[str]


def store_group(
    db: sqlite3.Connection,
    batch: Sequence[Held],
    *,
    lane: Callable[[str], int],
    drop_order: Sequence[str],
    replaces: str,
    max_bytes: int,
    depth: int,
    nbytes: int,
    next_seq: int,
    drop_totals: Mapping[str, int] | None,
) -> GroupResult:
    """Insert `batch` in one transaction (BEGIN IMMEDIATE .. COMMIT; no fsync here).

    A record of kind `replaces` (status) deletes stored ones of that kind first. Then,
    while the budget `max_bytes` is exceeded, the oldest record of the first kind in
    `drop_order` that has any is deleted and counted; the whole group is inserted first,
    so a record of a kind dropped earlier that came in the same group goes before an
    older one of a kind dropped later (an event is not dropped to make room for the
    group's own telemetry). `next_seq` raises the stored
    counter; `drop_totals` (drops counted elsewhere, e.g. in memory) raise the stored
    drop counters. Raises sqlite3.Error after rolling back."""
    drops: Counter[str] = Counter()
    db.execute("BEGIN IMMEDIATE")
    try:
        for h in batch:
            if h.kind == replaces:
                d, b = delete_where(db, "kind = ?", (replaces,))
                depth, nbytes = depth - d, nbytes - b
            db.execute(
                "INSERT INTO records (seq, kind, lane, topic, payload, retain, created, size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (h.seq, h.kind, lane(h.kind), h.topic, h.payload, int(h.retain), h.created, h.size),
            )
            depth, nbytes = depth + 1, nbytes + h.size
        # Nothing is visible before COMMIT, so inserting first costs no more than a group's
        # bytes (GROUP_MAX_BYTES) of WAL and never shows an over-budget outbox.
        while nbytes > max_bytes:
            victim = _oldest(db, drop_order)
            if victim is None:
                break
            vid, vkind, vsize = victim
            db.execute("DELETE FROM records WHERE id = ?", (vid,))
            depth, nbytes = depth - 1, nbytes - vsize
            drops[vkind] += 1
        _raise_counter(db, "next_seq", next_seq)
        for k, n in (drop_totals or {}).items():
            _raise_counter(db, f"drops.{k}", n)
        for k, n in drops.items():
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (f"drops.{k}", n),
            )
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise
    return GroupResult(depth, nbytes, drops)


def counter(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def _raise_counter(db: sqlite3.Connection, name: str, value: int) -> None:
    """Counters only grow (seq, drop totals)."""
    db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?)"
        " ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
        (name, value),
    )


def delete_where(db: sqlite3.Connection, where: str, args: tuple[object, ...]) -> tuple[int, int]:
    """Delete matching records; return (how many, their accounted bytes)."""
    row = db.execute(
        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE {where}",  # noqa: S608
        args,
    ).fetchone()
    db.execute(f"DELETE FROM records WHERE {where}", args)  # noqa: S608
    return int(row[0]), int(row[1])


def oldest_created(db: sqlite3.Connection) -> float | None:
    """The oldest stored record's created time (unix s), None when none is stored.
    Append order is time order, and the id index makes this O(1)."""
    row = db.execute("SELECT created FROM records ORDER BY id LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def _oldest(db: sqlite3.Connection, order: Sequence[str]) -> tuple[int, str, int] | None:
    for kind in order:
        row = db.execute(
            "SELECT id, size FROM records WHERE kind = ? ORDER BY id LIMIT 1", (kind,)
        ).fetchone()
        if row is not None:
            return int(row[0]), kind, int(row[1])
    return None


def rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        log.debug("rollback after a failed outbox write also failed", exc_info=True)
