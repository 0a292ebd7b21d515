"""Durable outbox: every record is written here first, deleted only after PUBACK.

SQLite in WAL mode, one connection guarded by a lock (the agent, the drain thread
and the MQTT callbacks all call in). Semantics are in docs/adr/0003-outbox-semantics.md:

- at-least-once: a record leaves the outbox only when the broker acknowledged it;
- `seq` is per device and never reused, across restarts, deletes and even a corrupt
  database (issued numbers are reserved in blocks in a separate file first);
- a disk budget bounds the queued bytes; when it is reached the oldest records are
  dropped in the order of `DROP_ORDER` (telemetry first, anomaly events last) and
  every drop is counted per kind, persistently;
- `sync="always"` fsyncs every append before it returns; deletes are never fsync'd on
  their own (losing one only means a duplicate delivery after a crash).
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.errors import OutboxError
from edge_agent.fsutil import atomic_write_bytes, fsync_dir

__all__ = [
    "DROP_ORDER",
    "MAX_RECORD_BYTES",
    "OUTBOX_FILE",
    "ROW_OVERHEAD_BYTES",
    "SEQ_BLOCK",
    "Kind",
    "Outbox",
    "OutboxStats",
    "Record",
]

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"
SEQ_FILE = "outbox.seq"
# Seq numbers are reserved this many at a time in SEQ_FILE, so a lost database never
# makes the device reuse a number (at the cost of a gap of at most SEQ_BLOCK).
SEQ_BLOCK = 1000
# One record may not be larger than this (a payload this big is a bug, not data).
MAX_RECORD_BYTES = 256 * 1024
# Accounted per row on top of topic + payload, so many tiny records still count.
ROW_OVERHEAD_BYTES = 64


class Kind(str, enum.Enum):
    EVENT = "event"
    TELEMETRY = "telemetry"
    OTA = "ota"
    STATUS = "status"


# When the budget is reached, the oldest record of the first kind that has any goes
# first. Status is superseded by the next birth anyway; events are what the device is for.
DROP_ORDER: tuple[Kind, ...] = (Kind.TELEMETRY, Kind.STATUS, Kind.OTA, Kind.EVENT)

# Status goes out first after a (re)connect: lane 0 drains before lane 1.
_LANE = {Kind.STATUS: 0, Kind.EVENT: 1, Kind.TELEMETRY: 1, Kind.OTA: 1}

_SCHEMA = """
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
class Record:
    id: int
    seq: int
    kind: Kind
    topic: str
    payload: bytes
    retain: bool
    created: float


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_created: float | None
    drops: dict[str, int]
    path: str

    def oldest_age_s(self, now: float) -> float | None:
        return None if self.oldest_created is None else max(0.0, now - self.oldest_created)


class Outbox:
    """A durable FIFO of MQTT records for one device."""

    def __init__(
        self,
        state_dir: Path,
        *,
        max_bytes: int,
        sync: Literal["always", "normal"] = "always",
        now: float,
    ) -> None:
        self._dir = Path(state_dir)
        self._path = self._dir / OUTBOX_FILE
        self._seq_path = self._dir / SEQ_FILE
        self._max_bytes = max_bytes
        self._sync = "FULL" if sync == "always" else "NORMAL"
        self._lock = threading.Lock()
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutboxError(f"{self._dir}: cannot create the state dir: {e}") from e
        self._db = self._open_or_replace(now)
        self._reserved = self._read_reserved()
        db_next = self._counter("next_seq")
        # A fresh database (first start, or a corrupt one moved aside) continues after the
        # last reserved block; an intact one knows its exact next number.
        self._next_seq = db_next if db_next > 0 else max(1, self._reserved)
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
        self._depth, self._bytes = int(row[0]), int(row[1])
        self._drops = {k.value: self._counter(f"drops.{k.value}") for k in Kind}

    # -- opening ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._sync}")
        return db

    def _open_or_replace(self, now: float) -> sqlite3.Connection:
        try:
            db = self._connect()
            ok = db.execute("PRAGMA quick_check").fetchone()
            if ok is None or ok[0] != "ok":
                db.close()
                raise sqlite3.DatabaseError(f"quick_check: {ok[0] if ok else 'no answer'}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            aside = self._move_aside(now)
            log.error(
                "outbox %s is corrupt (%s); moved it aside to %s and started a fresh one "
                "(records in it were not delivered; inspect or delete it)",
                self._path,
                e,
                aside,
            )
            try:
                db = self._connect()
                db.executescript(_SCHEMA)
            except sqlite3.Error as e2:
                raise OutboxError(f"{self._path}: cannot create a fresh outbox: {e2}") from e2
        except sqlite3.Error as e:
            raise OutboxError(f"{self._path}: cannot open the outbox: {e}") from e
        return db

    def _move_aside(self, now: float) -> Path:
        stamp = f"{now:.0f}"
        aside = self._path.with_name(f"{OUTBOX_FILE}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self._path}{suffix}")
            if src.exists():
                src.replace(Path(f"{aside}{suffix}"))
        fsync_dir(self._dir)
        return aside

    def _read_reserved(self) -> int:
        try:
            return int(self._seq_path.read_text(encoding="ascii").strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            raise OutboxError(
                f"{self._seq_path}: unreadable seq reservation ({e}); it holds one integer, "
                "the next seq this device may use -- restore it or remove it only if the "
                "outbox database is intact"
            ) from e

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        kind: Kind,
        topic: str,
        build: Callable[[int], bytes],
        *,
        now: float,
        retain: bool = False,
    ) -> int:
        """Give the record the next seq, build its payload, store it durably; return the seq.

        A new status record supersedes undelivered older ones (status is retained: only
        the newest matters).
        """
        with self._lock:
            seq = self._next_seq
            payload = build(seq)
            size = len(topic.encode()) + len(payload) + ROW_OVERHEAD_BYTES
            if size > min(MAX_RECORD_BYTES, self._max_bytes):
                raise OutboxError(
                    f"{kind.value} record of {size} bytes exceeds the limit of "
                    f"{min(MAX_RECORD_BYTES, self._max_bytes)} bytes; not stored"
                )
            if seq >= self._reserved:
                self._reserve(seq + SEQ_BLOCK)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if kind is Kind.STATUS:
                    self._delete_where("kind = ?", (Kind.STATUS.value,))
                self._make_room(size)
                self._db.execute(
                    "INSERT INTO records (seq, kind, lane, topic, payload, retain, created, size)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, kind.value, _LANE[kind], topic, payload, int(retain), now, size),
                )
                self._set_counter("next_seq", seq + 1)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise OutboxError(f"{self._path}: cannot store a {kind.value} record: {e}") from e
            self._next_seq = seq + 1
            self._depth += 1
            self._bytes += size
            return seq

    def allocate_seq(self) -> int:
        """A seq for a message that is not stored here (the Last Will)."""
        with self._lock:
            seq = self._next_seq
            if seq >= self._reserved:
                self._reserve(seq + SEQ_BLOCK)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._set_counter("next_seq", seq + 1)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise OutboxError(f"{self._path}: cannot allocate a seq: {e}") from e
            self._next_seq = seq + 1
            return seq

    def pending(self, kind: Kind) -> int:
        """How many records of one kind wait for delivery."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM records WHERE kind = ?", (kind.value,)
            ).fetchone()
            return int(row[0])

    def _reserve(self, upto: int) -> None:
        try:
            atomic_write_bytes(self._seq_path, f"{upto}\n".encode())
        except OSError as e:
            raise OutboxError(f"{self._seq_path}: cannot reserve seq numbers: {e}") from e
        self._reserved = upto

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _delete_where(self, where: str, args: tuple[object, ...]) -> None:
        row = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE {where}",  # noqa: S608
            args,
        ).fetchone()
        self._db.execute(f"DELETE FROM records WHERE {where}", args)  # noqa: S608
        self._depth -= int(row[0])
        self._bytes -= int(row[1])

    def _make_room(self, size: int) -> None:
        """Drop oldest records by DROP_ORDER until `size` more bytes fit. In a transaction."""
        for kind in DROP_ORDER:
            while self._bytes + size > self._max_bytes:
                row = self._db.execute(
                    "SELECT id, size FROM records WHERE kind = ? ORDER BY id LIMIT 1",
                    (kind.value,),
                ).fetchone()
                if row is None:
                    break
                self._db.execute("DELETE FROM records WHERE id = ?", (row[0],))
                self._depth -= 1
                self._bytes -= int(row[1])
                self._drops[kind.value] += 1
                self._set_counter(f"drops.{kind.value}", self._drops[kind.value])
                log.warning(
                    "outbox full (%d bytes budget): dropped the oldest %s record",
                    self._max_bytes,
                    kind.value,
                )

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback after a failed outbox write also failed", exc_info=True)
        # Re-read the accounting: the failed transaction may have counted drops.
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
        self._depth, self._bytes = int(row[0]), int(row[1])
        self._drops = {k.value: self._counter(f"drops.{k.value}") for k in Kind}

    def delete(self, ids: Iterable[int]) -> int:
        """Remove acknowledged records. Not fsync'd on its own: see the module docstring."""
        id_list = list(ids)
        if not id_list:
            return 0
        with self._lock:
            marks = ",".join("?" * len(id_list))
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._delete_where(f"id IN ({marks})", tuple(id_list))
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise OutboxError(f"{self._path}: cannot delete delivered records: {e}") from e
            return len(id_list)

    # -- reading ---------------------------------------------------------------------------

    def peek(self, limit: int, exclude: Iterable[int] = ()) -> list[Record]:
        """The next records to send: status first, then everything else in append order."""
        ex = tuple(exclude)
        where = f"WHERE id NOT IN ({','.join('?' * len(ex))})" if ex else ""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, seq, kind, topic, payload, retain, created FROM records "  # noqa: S608
                    f"{where} ORDER BY lane, id LIMIT ?",
                    (*ex, limit),
                ).fetchall()
            except sqlite3.Error as e:
                raise OutboxError(f"{self._path}: cannot read records: {e}") from e
        return [
            Record(int(r[0]), int(r[1]), Kind(r[2]), str(r[3]), bytes(r[4]), bool(r[5]), r[6])
            for r in rows
        ]

    def stats(self) -> OutboxStats:
        with self._lock:
            # Append order is time order, and the id index makes this O(1).
            row = self._db.execute("SELECT created FROM records ORDER BY id LIMIT 1").fetchone()
            return OutboxStats(
                depth=self._depth,
                bytes=self._bytes,
                oldest_created=None if row is None else float(row[0]),
                drops=dict(self._drops),
                path=str(self._path),
            )

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                log.debug("closing the outbox failed", exc_info=True)
