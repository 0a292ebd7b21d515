"""Durable outbox: every record is written here first, deleted only after PUBACK.

Semantics are in docs/adr/0003-outbox-semantics.md. In short:

- at-least-once: a record leaves the outbox only when the broker acknowledged it, and
  it is offered for sending only once it is durable;
- `seq` is per device and never goes back or repeats, across restarts, deletes, a
  corrupt database or a power cut that took the WAL's tail (numbers are reserved ahead
  in blocks in `outbox.seq`; start-up resumes past the largest of the reservation, the
  database's counter and its records);
- `append` never raises on a storage fault and never waits on the disk for long: it gives
  the record its seq and hands it to the writer thread, which stores waiting records in
  groups (one transaction, one WAL fsync per group, outside the locks appends take) and
  wakes the appenders. `append(wait=False)` (events from a stream's scoring thread)
  returns once queued; the record is still durable before the drain may offer it, and a
  kill -9 before its group's fsync loses it (a window of one group commit). While the
  database cannot be written (disk full, locked by another process, I/O error) records
  wait in a bounded in-memory spill (`spill.Spill`) and the writer retries with backoff;
  once it can write again, everything held is stored in seq order. A writer stuck in
  one step for WRITER_STALLED_S (a hung disk: no error, no fault) is treated the same
  by appenders: nobody waits for it, records wait in the spill. `health()` says what
  is wrong and since when;
- the status path never waits on the disk: `stats()`/`health()` read accounting kept
  under the short `_cv` lock, `pending()` tries the database lock briefly and falls
  back to its last count, and `close()` returns even while the writer hangs;
- a disk budget bounds the queued bytes; when it is reached the oldest records are
  dropped in the order of `DROP_ORDER` (telemetry first, anomaly events last), the same
  order the memory spill drops in, and every drop is counted per kind, persistently;
- deletes are never fsync'd (losing one only means a duplicate delivery after a crash).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal

from edge_agent.errors import OutboxError
from edge_agent.fsutil import fsync_dir
from edge_agent.reporting import outbox_db
from edge_agent.reporting.outbox_db import MovedAside, counter
from edge_agent.reporting.outbox_types import (
    DROP_ORDER,
    LANE,
    Kind,
    OutboxHealth,
    OutboxStats,
    Record,
)
from edge_agent.reporting.seqres import SEQ_BLOCK, SeqReservation
from edge_agent.reporting.spill import Held, Spill

__all__ = [
    "DROP_ORDER",
    "MAX_RECORD_BYTES",
    "MEMORY_MAX_BYTES",
    "MEMORY_MAX_RECORDS",
    "OUTBOX_FILE",
    "ROW_OVERHEAD_BYTES",
    "SEQ_BLOCK",
    "Kind",
    "Outbox",
    "OutboxHealth",
    "OutboxStats",
    "Record",
]

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"
SEQ_FILE = "outbox.seq"  # the seq reservation (seqres.SeqReservation), SEQ_BLOCK at a time
# One record may not be larger than this (a payload this big is a bug, not data).
MAX_RECORD_BYTES = 256 * 1024
# Accounted per row on top of topic + payload, so many tiny records still count.
ROW_OVERHEAD_BYTES = 64
# Bounds of the memory spill (records waiting while the database cannot be written).
# (~1.1 kB of RSS per held record: 10,000 is ~11 MB at worst, 16 minutes at 10 events/s)
MEMORY_MAX_RECORDS = 10_000
MEMORY_MAX_BYTES = 4 * 1024 * 1024
# One group commit stores at most this many records / bytes.
GROUP_MAX_RECORDS = 256
GROUP_MAX_BYTES = 256 * 1024
# How long append() waits for its record to become durable while the writer is healthy.
APPEND_WAIT_S = 2.0
# append(wait=False) waits after all while more records than this wait for the writer:
# a stream at max speed must not outrun the disk (and fill the memory spill); streams in
# real time queue a few records per group at most.
APPEND_BACKLOG = 64
# A writer whose current step has lasted this long is stalled (a hung or very slow disk:
# no error, so no fault): appenders stop waiting for it, as under a fault, and records
# wait in the bounded memory spill. Back-pressure applies only to a writer that moves.
WRITER_STALLED_S = 1.0
# How long stop() waits for the database lock held by a writer stuck in a disk write.
CLOSE_LOCK_S = 0.5
# The writer's retry backoff while the database cannot be written.
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
# An idle writer looks at the WAL this often (checkpoints deletes' WAL growth).
MAINTENANCE_S = 2.0
# An I/O error with less free space than this on the state filesystem is a full disk.
FULL_BELOW_BYTES = 64 * 1024
# A fault is logged again at most this often while it lasts.
FAULT_LOG_EVERY_S = 60.0


class Outbox:
    """A durable FIFO of MQTT records for one device, with a writer thread."""

    def __init__(
        self,
        state_dir: Path,
        *,
        max_bytes: int,
        sync: Literal["always", "normal"] = "always",
        now: float,
        memory_max_records: int = MEMORY_MAX_RECORDS,
        memory_max_bytes: int = MEMORY_MAX_BYTES,
    ) -> None:
        self._dir = Path(state_dir)
        self._path = self._dir / OUTBOX_FILE
        self._seq = SeqReservation(self._dir / SEQ_FILE)
        self._max_bytes = max_bytes
        self._fsync = sync == "always"
        # _cv (its lock) guards seq issue, the spill, the fault and the durable mark:
        # short sections only, never disk I/O (except a rare synchronous reservation).
        self._cv = threading.Condition()
        # _db_lock guards the connection; it is held across disk I/O, so nothing the
        # main loop or the status path calls waits for it (they read the accounting
        # below under _cv, or try the lock briefly and fall back to a cached answer).
        self._db_lock = threading.Lock()
        self._spill = Spill(
            max_records=memory_max_records,
            max_bytes=memory_max_bytes,
            drop_order=[k.value for k in DROP_ORDER],
        )
        self._fault: str | None = None
        self._fault_since: float | None = None
        self._fault_detail = ""
        self._fault_logged = 0.0
        self._closing = False
        self._closed = False  # the database is closed for good: the writer ends
        self._step_started: float | None = None  # monotonic; set while the writer works
        self._groups = 0
        self._durable = 0  # every stored record with seq <= this is durable
        # memory drops not yet persisted: counted up by appends, saved by the writer
        self._drops_version = 0
        self._drops_saved = 0
        self._unlogged_drops: Counter[str] = Counter()
        self._drops_logged = -FAULT_LOG_EVERY_S
        self.moved_aside: MovedAside | None = None
        # Called by the writer (no lock held) after a group became durable: the drain
        # offers the new records (from this thread while it is idle) or wakes up.
        self.on_durable: Callable[[], None] | None = None
        # depth/bytes change under both locks (after each commit): read under _cv alone.
        self._depth = 0
        self._bytes = 0
        self._drops: dict[str, int] = {k.value: 0 for k in Kind}
        # the oldest stored record's created time, as last read (None: none stored)
        self._oldest_cached: float | None = None
        self._pending_cached: dict[str, int] = {}
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutboxError(f"{self._dir}: cannot create the state dir: {e}") from e
        reserved, garbled = self._seq.read()
        self._db: sqlite3.Connection | None = None
        try:
            self._open(now)
        except (sqlite3.Error, OSError) as e:
            if reserved is None:
                # Without the database and without a reservation nothing says which seq
                # numbers are free: refuse rather than risk reusing one.
                raise OutboxError(
                    f"{self._path}: cannot open the outbox ({outbox_db.classify(e)}: {e}) and "
                    f"{self._seq.path} is missing; free the disk or the lock and start again"
                ) from e
            self._set_fault(e, now)
        db_next, max_row = self._db_seq()
        nxt = max(1, db_next, max_row + 1, reserved or 0)
        if garbled:
            nxt += SEQ_BLOCK  # the lost reservation may have been up to a block ahead
        self._next_seq = nxt
        self._durable = nxt - 1  # what the database holds now is stored already
        self._seq.keep(nxt + SEQ_BLOCK)
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    # -- opening ---------------------------------------------------------------------------

    def _open(self, now: float) -> None:
        """Open the database (moving it aside only if it is corrupt); load the accounting.
        Raises sqlite3.Error/OSError on a fault (locked, disk full, I/O)."""
        existed = self._path.exists()
        if existed and self._path.stat().st_size == 0:
            log.warning(
                "outbox %s is empty (0 bytes): starting a fresh outbox; whatever queue it "
                "held is lost (seq continues after the reservation in %s)",
                self._path,
                self._seq.path,
            )
        try:
            db = outbox_db.connect(self._path)
        except sqlite3.Error as e:
            if not outbox_db.is_corrupt(e):
                raise
            self.moved_aside = outbox_db.move_aside(self._path, now, str(e))
            lost = self.moved_aside.records
            log.error(
                "outbox %s is corrupt (%s); moved it aside to %s and started a fresh one "
                "(%s records in it were not delivered; inspect or delete it)",
                self._path,
                e,
                self.moved_aside.path,
                "unknown" if lost is None else lost,
            )
            db = outbox_db.connect(self._path)
        try:
            if not existed:
                fsync_dir(self._dir)
            row = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records").fetchone()
            oldest = outbox_db.oldest_created(db)
            drops = {
                k.value: counter(db, f"drops.{k.value}") + self._spill.dropped[k.value]
                for k in Kind
            }
        except BaseException:
            db.close()
            raise
        with self._db_lock, self._cv:
            self._db = db
            self._depth, self._bytes = int(row[0]), int(row[1])
            self._oldest_cached = oldest
            self._drops = drops
            self._drops_saved = -1 if any(self._spill.dropped.values()) else self._drops_version

    def _db_seq(self) -> tuple[int, int]:
        """(the database's next_seq counter, the largest seq among its records); zeros
        when the database is not open."""
        with self._db_lock:
            if self._db is None:
                return 0, 0
            try:
                nxt = counter(self._db, "next_seq")
                row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()
            except sqlite3.Error:
                return 0, 0
            return nxt, int(row[0])

    # -- writing (any thread) --------------------------------------------------------------

    def append(
        self,
        kind: Kind,
        topic: str,
        build: Callable[[int], bytes],
        *,
        now: float,
        retain: bool = False,
        wait: bool = True,
    ) -> int:
        """Give the record the next seq, build its payload, queue it; return the seq.

        With `wait` (the default), returns once the record is durable, or at once while
        the outbox has a fault (the record then waits in memory and is stored, in seq
        order, when the fault clears), or after APPEND_WAIT_S at most. Without it, returns
        as soon as the record is queued (a stream's scoring thread must not wait for a
        disk), unless more than APPEND_BACKLOG records already wait for a writer that
        moves (then it waits as with `wait`: a stream at max speed is held to a busy
        disk's pace; a writer stalled for WRITER_STALLED_S is waited for by nobody): the
        writer makes it durable with its group, calls `on_durable`, and only then may the
        drain offer it; a kill -9 before that group's fsync loses it, like the samples
        still in flight. Never raises on a storage fault; raises
        OutboxError only for a record over the size limit (a bug, nothing is queued).
        A new status record supersedes undelivered older ones (status is retained: only
        the newest matters)."""
        with self._cv:
            seq = self._next_seq
            payload = build(seq)
            size = len(topic.encode()) + len(payload) + ROW_OVERHEAD_BYTES
            limit = min(MAX_RECORD_BYTES, self._max_bytes)
            if size > limit:
                raise OutboxError(
                    f"{kind.value} record of {size} bytes exceeds the limit of {limit} bytes; "
                    "not stored"
                )
            if seq >= self._seq.upto and not self._seq.problem:  # else: the writer retries
                self._seq.keep(seq + SEQ_BLOCK)  # rare: the writer keeps ahead
            self._next_seq = seq + 1
            held = Held(seq, kind.value, topic, payload, retain, now, size)
            dropped = self._spill.add(
                held, supersedes=Kind.STATUS.value if kind is Kind.STATUS else None
            )
            if dropped:
                self._count_memory_drops(dropped)
            self._cv.notify_all()
            deadline = time.monotonic() + APPEND_WAIT_S
            if len(self._spill) > APPEND_BACKLOG and self._fault is None:
                wait = True  # the writer is behind: back-pressure while it moves
            while (
                wait
                and self._durable < seq
                and self._fault is None
                and not self._closing
                and not self._writer_stalled()
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # in slices: a writer that stalls (a hung disk) sets no fault to wake us
                self._cv.wait(min(left, WRITER_STALLED_S / 4))
            return seq

    def _writer_stalled(self) -> bool:
        """The writer's current step has lasted WRITER_STALLED_S: the disk hangs or is
        very slow. Appenders then treat it like a fault (no waiting; the spill holds)."""
        started = self._step_started
        return started is not None and time.monotonic() - started >= WRITER_STALLED_S

    def allocate_seq(self) -> int:
        """A seq for a message that is not stored here (the Last Will). Never raises: the
        number is covered by the reservation file (retried if it could not be written)."""
        with self._cv:
            seq = self._next_seq
            if seq >= self._seq.upto and not self._seq.problem:  # else: the writer retries
                self._seq.keep(seq + SEQ_BLOCK)  # rare: the writer keeps ahead
            self._next_seq = seq + 1
            self._cv.notify_all()  # the writer keeps the reservation ahead
            return seq

    def _count_memory_drops(self, dropped: list[Held]) -> None:
        kinds = Counter(h.kind for h in dropped)
        for k, n in kinds.items():
            self._drops[k] = self._drops.get(k, 0) + n
        self._drops_version += 1
        log.warning(
            "outbox: memory spill full (%d records, %d bytes) while the database cannot be "
            "written; dropped the oldest %s",
            self._spill.max_records,
            self._spill.max_bytes,
            _in_drop_order(kinds),
        )

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        backoff = RETRY_MIN_S
        last_maint = time.monotonic()
        while True:
            with self._cv:
                if self._fault is None:
                    while (
                        not len(self._spill)
                        and not self._closing
                        # reserve ahead soon enough (a failing reservation is retried
                        # at the maintenance pace, not in a busy loop)
                        and (self._next_seq + SEQ_BLOCK // 2 < self._seq.upto or self._seq.problem)
                        and time.monotonic() - last_maint < MAINTENANCE_S
                    ):
                        self._cv.wait(MAINTENANCE_S)
                if self._closed or (
                    self._closing and (not len(self._spill) or self._fault is not None)
                ):
                    return
                # While the database fails, probe with one record: the rest stay
                # unpinned, so the spill's bounds hold exactly.
                batch = self._spill.take(1 if self._fault is not None else GROUP_MAX_RECORDS)
                nbytes = 0
                for i, h in enumerate(batch):
                    nbytes += h.size
                    if nbytes > GROUP_MAX_BYTES and i > 0:
                        batch = batch[:i]
                        break
                self._spill.pin(len(batch))
                issued = self._next_seq
            self._step_started = time.monotonic()
            try:
                self._step(batch, issued)
                last_maint = time.monotonic()
            except Exception as e:  # noqa: BLE001 - any storage error is a fault, retried
                with self._cv:
                    self._spill.pin(0)
                    self._set_fault(e, time.time())
                    self._cv.notify_all()
                    self._cv.wait(backoff)
                backoff = min(RETRY_MAX_S, backoff * 2)
                continue
            finally:
                self._step_started = None
            backoff = RETRY_MIN_S

    def _step(self, batch: list[Held], issued: int) -> None:
        if self._db is None:
            if self._closed:
                raise OutboxError(f"{self._path}: the outbox is closed")
            self._open(time.time())
            db_next, max_row = self._db_seq()
            with self._cv:  # a stale reservation must not make us reuse a stored number
                self._next_seq = max(self._next_seq, db_next, max_row + 1)
        if issued + SEQ_BLOCK // 2 >= self._seq.upto:
            self._seq.keep(issued + SEQ_BLOCK)
        if batch:
            self._store(batch, issued)
            if self._fsync:
                outbox_db.fsync_wal(self._path)
            # Durable now: release the appenders and wake the drain before any checkpoint
            # (one step in eight or so, a few ms more: it was the tail of event latency).
            with self._cv:
                self._groups += 1
                self._durable = max(self._durable, batch[-1].seq)
                self._spill.release(batch)
                self._cv.notify_all()
            hook = self.on_durable
            if hook is not None:
                hook()
        if outbox_db.wal_bytes(self._path) > (outbox_db.CHECKPOINT_WAL_BYTES if batch else 0):
            with self._db_lock:
                if self._db is not None:
                    outbox_db.checkpoint(self._db)
        with self._cv:
            self._clear_fault()
            self._cv.notify_all()

    def _store(self, batch: list[Held], issued: int) -> None:
        """One transaction for the group. Accounting changes only after COMMIT."""
        with self._db_lock:
            if self._db is None:
                raise sqlite3.OperationalError("outbox is not open")
            with self._cv:
                version = self._drops_version
                totals = dict(self._drops) if version != self._drops_saved else None
            res = outbox_db.store_group(
                self._db,
                batch,
                lane=lambda kind: LANE[Kind(kind)],
                drop_order=[k.value for k in DROP_ORDER],
                replaces=Kind.STATUS.value,
                max_bytes=self._max_bytes,
                depth=self._depth,
                nbytes=self._bytes,
                next_seq=issued,
                drop_totals=totals,
            )
            try:  # committed already: a failed read must not make the group a fault
                oldest = outbox_db.oldest_created(self._db)
            except sqlite3.Error:
                oldest = self._oldest_cached
            with self._cv:
                self._depth, self._bytes = res.depth, res.nbytes
                self._oldest_cached = oldest
                for k, n in res.drops.items():
                    self._drops[k] = self._drops.get(k, 0) + n
                if totals is not None:
                    self._drops_saved = version  # later memory drops are saved next time
        if res.drops:
            self._log_drops(res.drops)

    def _log_drops(self, drops: Counter[str]) -> None:
        # A long outage drops on every append: say it the first time, then sum it up at
        # most every FAULT_LOG_EVERY_S (the counters in stats() are exact).
        self._unlogged_drops.update(drops)
        now = time.monotonic()
        if now - self._drops_logged < FAULT_LOG_EVERY_S:
            return
        self._drops_logged = now
        log.warning(
            "outbox full (%d bytes budget): dropped the oldest %s (totals so far: %s)",
            self._max_bytes,
            _in_drop_order(self._unlogged_drops),
            _in_drop_order(self._drops),
        )
        self._unlogged_drops.clear()

    def _set_fault(self, e: BaseException, now: float) -> None:
        what = outbox_db.classify(e)
        if what == "I/O error" and _free_bytes(self._dir) < FULL_BELOW_BYTES:
            what = "disk full"  # SQLite says "disk I/O error" when it cannot create -shm
        first = self._fault is None
        if first:
            self._fault_since = now
        self._fault, self._fault_detail = what, str(e)
        if first or time.monotonic() - self._fault_logged > FAULT_LOG_EVERY_S:
            self._fault_logged = time.monotonic()
            log.error(
                "outbox %s: cannot write (%s: %s); %d record(s) held in memory, retrying",
                self._path,
                what,
                e,
                len(self._spill),
            )

    def _clear_fault(self) -> None:
        if self._fault is None:
            return
        since = self._fault_since or time.time()
        log.warning(
            "outbox %s: writable again after %.1f s (%s); stored the records held in memory",
            self._path,
            time.time() - since,
            self._fault,
        )
        self._fault, self._fault_since, self._fault_detail = None, None, ""

    # -- deleting and reading (the drain) --------------------------------------------------

    def delete(self, ids: Iterable[int]) -> int:
        """Remove acknowledged records. Never fsync'd (see the module docstring).
        Raises OutboxError when the database cannot be written now (retry later)."""
        id_list = list(ids)
        if not id_list:
            return 0
        marks = ",".join("?" * len(id_list))
        with self._db_lock:
            db = self._db
            if db is None:
                raise OutboxError(f"{self._path}: cannot delete delivered records: not open")
            try:
                db.execute("BEGIN IMMEDIATE")
                d, b = outbox_db.delete_where(db, f"id IN ({marks})", tuple(id_list))
                db.execute("COMMIT")
            except sqlite3.Error as e:
                outbox_db.rollback(db)
                raise OutboxError(f"{self._path}: cannot delete delivered records: {e}") from e
            try:
                oldest = outbox_db.oldest_created(db)
            except sqlite3.Error:
                oldest = None
            with self._cv:
                self._depth -= d
                self._bytes -= b
                self._oldest_cached = oldest
            return len(id_list)

    def peek(self, limit: int, exclude: Iterable[int] = ()) -> list[Record]:
        """The next durable records to send: status first, then the rest in seq order."""
        ex = tuple(exclude)
        where = f"AND id NOT IN ({','.join('?' * len(ex))})" if ex else ""
        with self._cv:
            durable = self._durable
        with self._db_lock:
            if self._db is None:
                return []
            try:
                rows = self._db.execute(
                    "SELECT id, seq, kind, topic, payload, retain, created FROM records "  # noqa: S608
                    f"WHERE seq <= ? {where} ORDER BY lane, id LIMIT ?",
                    (durable, *ex, limit),
                ).fetchall()
            except sqlite3.Error as e:
                raise OutboxError(f"{self._path}: cannot read records: {e}") from e
        return [
            Record(int(r[0]), int(r[1]), Kind(r[2]), str(r[3]), bytes(r[4]), bool(r[5]), r[6])
            for r in rows
        ]

    def pending(self, kind: Kind) -> int:
        """How many records of one kind wait for delivery (stored or held in memory).
        Never waits for a writer stuck on the disk: while the database lock is busy the
        stored part is the last count read (stop() polls this for the offline status)."""
        with self._cv:
            held = self._spill.count(kind.value)
        if not self._db_lock.acquire(timeout=0.05):
            with self._cv:
                return held + self._pending_cached.get(kind.value, 0)
        try:
            if self._db is None:
                return held
            try:
                row = self._db.execute(
                    "SELECT COUNT(*) FROM records WHERE kind = ?", (kind.value,)
                ).fetchone()
            except sqlite3.Error:
                return held + 1  # unknown: say "something waits"
            stored = int(row[0])
        finally:
            self._db_lock.release()
        with self._cv:
            self._pending_cached[kind.value] = stored
        return held + stored

    def health(self) -> OutboxHealth:
        started = self._step_started
        with self._cv:
            return OutboxHealth(
                writer_busy_s=0.0 if started is None else time.monotonic() - started,
                fault=self._fault,
                since=self._fault_since,
                detail=self._fault_detail,
                seq_problem=self._seq.problem,
                held=len(self._spill),
                held_bytes=self._spill.bytes,
                dropped_in_memory=dict(self._spill.dropped),
                moved_aside=self.moved_aside,
            )

    def stats(self) -> OutboxStats:
        """Figures for the status snapshot (the agent's main tick): from the accounting
        kept under _cv, updated after each commit and delete; never touches the disk or
        waits for a writer stuck on it."""
        health = self.health()
        with self._cv:
            held_oldest = self._spill.oldest_created()
            oldest = self._oldest_cached if self._depth > 0 else None
            return OutboxStats(
                depth=self._depth,
                bytes=self._bytes,
                oldest_created=oldest if oldest is not None else held_oldest,
                drops=dict(self._drops),
                path=str(self._path),
                health=health,
                groups=self._groups,
            )

    @property
    def path(self) -> Path:
        return self._path

    @property
    def writer_alive(self) -> bool:
        """The writer thread runs (it ends only at close(), or on a bug)."""
        return self._thread.is_alive()

    def close(self, timeout: float = 2.0) -> None:
        """Store what is held (within `timeout` s, unless the database has a fault), stop
        the writer, close the database. Records still held are logged as not stored.
        Returns within about `timeout` + CLOSE_LOCK_S even when the writer is stuck in a
        disk write (a hung disk): the database is then left to the process's exit, and
        the records of that unfinished write are counted as only in memory."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        hung = self._thread.is_alive()
        with self._cv:
            left = Counter(h.kind for h in self._spill.take(len(self._spill)))
        if left:
            log.error(
                "outbox %s closed with records only in memory, not stored%s: %s",
                self._path,
                " (the disk did not finish a write)" if hung else "",
                ", ".join(f"{n} {k}" for k, n in sorted(left.items())),
            )
        with self._cv:
            self._closed = True  # a stuck writer ends after its write instead of retrying
        if not self._db_lock.acquire(timeout=CLOSE_LOCK_S):
            log.error(
                "outbox %s: the writer is stuck in a disk write; not waiting for it to close "
                "the database",
                self._path,
            )
            return  # the reservation stays as written: the next start skips past it
        try:
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error:
                    log.debug("closing the outbox failed", exc_info=True)
                self._db = None
        finally:
            self._db_lock.release()
        if hung:
            return  # writing the reservation file would wait on the same disk
        # A clean stop knows exactly which numbers were issued: give back the rest of the
        # block so the next start continues without a gap (a crash leaves the reservation
        # as it was, and the next start skips past it).
        with self._cv:
            self._seq.give_back(self._next_seq)


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 62  # unknown: do not claim the disk is full


_DROP_RANK = {k.value: i for i, k in enumerate(DROP_ORDER)}


def _in_drop_order(counts: Mapping[str, int]) -> str:
    """ "43 telemetry, 8 event": the kinds in the order they are dropped (DROP_ORDER), not
    alphabetical, so a log line says what went first."""
    rank = _DROP_RANK
    kinds = sorted((k for k, n in counts.items() if n), key=lambda k: (rank.get(k, len(rank)), k))
    return ", ".join(f"{counts[k]} {k}" for k in kinds)
