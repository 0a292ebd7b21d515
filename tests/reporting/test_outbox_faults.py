"""Outbox storage faults and promises, against real SQLite files (no broker).

A second sqlite3 connection stands in for another process holding the write lock (a
backup tool, a technician's shell); a power cut under sync = "normal" is modelled by
keeping only what the main database file held at its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from edge_agent.reporting.outbox import (
    APPEND_WAIT_S,
    OUTBOX_FILE,
    SEQ_BLOCK,
    SEQ_FILE,
    Kind,
    Outbox,
)
from edge_agent.reporting.outbox_db import CHECKPOINT_WAL_BYTES
from edge_agent.reporting.outbox_health import outbox_health
from tests.reporting.helpers import wait_until


def _open(d: Path, *, sync: str = "always", max_bytes: int = 1 << 20) -> Outbox:
    return Outbox(d, max_bytes=max_bytes, sync=sync, now=time.time())  # type: ignore[arg-type]


def _add(ob: Outbox, kind: Kind = Kind.EVENT, body: bytes = b"x" * 40) -> int:
    return ob.append(kind, f"edge/d/{kind.value}", lambda s: body, now=time.time())


def _lock(d: Path) -> sqlite3.Connection:
    """Another process's connection holding the write lock (BEGIN IMMEDIATE)."""
    c = sqlite3.connect(d / OUTBOX_FILE, isolation_level=None, timeout=10)
    c.execute("BEGIN IMMEDIATE")
    return c


def test_locked_outbox_holds_records_in_memory_and_stores_them_in_seq_order_after(
    tmp_path: Path,
) -> None:
    ob = _open(tmp_path)
    before = [_add(ob) for _ in range(3)]
    # stored, and counted once: while the writer holds the database (retrying against
    # the lock below) pending() answers with the last count it read, not a fresh one
    assert wait_until(lambda: ob.health().held == 0 and ob.pending(Kind.EVENT) == 3, 30)
    locker = _lock(tmp_path)
    try:
        t0 = time.monotonic()
        during = [_add(ob, Kind.EVENT if i % 3 else Kind.TELEMETRY) for i in range(30)]
        # appends never raise and never wait long: at most one bounded wait, then the
        # fault is known and the rest return at once
        assert time.monotonic() - t0 < APPEND_WAIT_S + 10
        h = ob.health()
        assert h.fault == "database locked"
        assert h.since is not None
        assert h.held == 30
        assert ob.pending(Kind.EVENT) == 3 + 20  # stored + held
        text = outbox_health(h, {})["problems"][0]
        assert text.startswith("outbox: database locked since ")
        assert "30 record(s) held in memory" in text
        # nothing held is offered for sending before it is stored
        assert [r.seq for r in ob.peek(100)] == before
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert wait_until(lambda: ob.health().held == 0, timeout=60)
    assert ob.health().fault is None
    assert [r.seq for r in ob.peek(100)] == before + during
    assert during == sorted(during)
    ob.close()


def test_records_waiting_together_are_stored_in_one_group_commit(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    _add(ob)
    locker = _lock(tmp_path)  # hold the writer back so that records pile up
    try:
        held = [_add(ob) for _ in range(50)]
        groups = ob.stats().groups
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert wait_until(lambda: ob.health().held == 0, timeout=60)
    # the writer's probe (one record), then one transaction and one fsync for the other
    # 49 (GROUP_MAX_RECORDS is 256)
    assert ob.stats().groups <= groups + 2
    assert [r.seq for r in ob.peek(100)][1:] == held
    ob.close()


def test_locked_at_start_is_waited_for_never_moved_aside(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    queued = [_add(ob) for _ in range(3)]
    ob.close()
    locker = _lock(tmp_path)
    locker.execute("INSERT INTO counters (name, value) VALUES ('other-process', 1)")
    try:
        ob = _open(tmp_path)
        assert not list(tmp_path.glob(f"{OUTBOX_FILE}.corrupt-*"))
        assert ob.health().moved_aside is None
        assert [r.seq for r in ob.peek(10)] == queued  # the queue is still there
        late = _add(ob)
        assert late > queued[-1]
        assert ob.health().fault == "database locked"
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert wait_until(lambda: ob.health().held == 0 and ob.health().fault is None, timeout=60)
    assert [r.seq for r in ob.peek(10)] == [*queued, late]
    ob.close()


def test_power_cut_under_normal_sync_never_reissues_a_delivered_seq(tmp_path: Path) -> None:
    """sync = "normal": commits are durable only at checkpoints, so a power cut can take
    the WAL's tail. Keep the main database file as it was at its last checkpoint (the WAL
    lost), and start again: no seq that was delivered meanwhile may come back."""
    live = tmp_path / "live"
    ob = _open(live, sync="normal")
    for _ in range(5):
        _add(ob)
    ob.delete(r.id for r in ob.peek(10))
    with sqlite3.connect(live / OUTBOX_FILE) as c:  # the last checkpoint before the cut
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    at_checkpoint = (live / OUTBOX_FILE).read_bytes()
    delivered = []
    for _ in range(40):
        _add(ob)
        recs = ob.peek(10)
        delivered += [r.seq for r in recs]  # sent and acknowledged
        ob.delete(r.id for r in recs)
    # The power cut: the database file as of the checkpoint, no WAL; the reservation
    # file is written with fsync + rename, so it survives as it was.
    cut = tmp_path / "after-cut"
    cut.mkdir()
    (cut / OUTBOX_FILE).write_bytes(at_checkpoint)
    shutil.copy(live / SEQ_FILE, cut / SEQ_FILE)
    ob2 = _open(cut, sync="normal")
    fresh = [_add(ob2) for _ in range(5)]
    assert min(fresh) > max(delivered), (fresh, max(delivered))
    ob2.close()


def test_seq_after_a_crash_skips_at_most_one_block(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    last = [_add(ob) for _ in range(10)][-1]
    # no close(): a crash leaves the reservation ahead of the last issued number
    ob2 = _open(tmp_path)
    nxt = _add(ob2)
    assert last < nxt <= last + SEQ_BLOCK + 1
    ob2.close()


def test_corrupt_outbox_moved_aside_is_said_in_status_with_what_was_lost(
    tmp_path: Path,
) -> None:
    ob = _open(tmp_path)
    _add(ob)
    ob.close()
    (tmp_path / OUTBOX_FILE).write_bytes(b"garbage, not sqlite " * 300)
    ob = _open(tmp_path)
    moved = ob.health().moved_aside
    assert moved is not None
    assert Path(moved.path).exists()
    problems = outbox_health(ob.health(), {})["problems"]
    assert any("was corrupt" in p and moved.path in p and "were lost" in p for p in problems)
    ob.close()


def test_empty_outbox_file_is_logged_not_silently_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ob = _open(tmp_path)
    first = _add(ob)
    ob.close()
    (tmp_path / OUTBOX_FILE).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        ob = _open(tmp_path)
    assert "is empty (0 bytes)" in caplog.text
    assert _add(ob) > first
    ob.close()


def test_garbled_seq_reservation_does_not_refuse_start_and_skips_ahead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ob = _open(tmp_path)
    last = [_add(ob) for _ in range(4)][-1]
    ob.close()
    (tmp_path / SEQ_FILE).write_bytes(b"\x00\xffnot a number")
    with caplog.at_level(logging.ERROR):
        ob = _open(tmp_path)
    assert "unreadable seq reservation" in caplog.text
    assert _add(ob) > last + SEQ_BLOCK - 1
    ob.close()


def test_wal_is_checkpointed_so_disk_use_stays_bounded(tmp_path: Path) -> None:
    ob = _open(tmp_path, max_bytes=200_000)
    wal = Path(f"{tmp_path / OUTBOX_FILE}-wal")
    biggest = 0
    for i in range(3000):
        _add(ob, Kind.TELEMETRY if i % 2 else Kind.EVENT, body=b"y" * 300)
        if i % 4 == 3:
            ob.delete(r.id for r in ob.peek(3))
        if wal.exists():
            biggest = max(biggest, wal.stat().st_size)
    # one checkpoint threshold plus at most one group's pages on top
    assert biggest <= CHECKPOINT_WAL_BYTES + 512 * 1024, biggest
    db_size = (tmp_path / OUTBOX_FILE).stat().st_size
    assert db_size <= 2 * 200_000 + 64 * 1024, db_size
    ob.close()


def test_close_keeps_what_is_held_in_the_log_when_storage_still_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ob = _open(tmp_path)
    locker = _lock(tmp_path)
    try:
        _add(ob)
        assert ob.health().fault == "database locked"
        with caplog.at_level(logging.ERROR):
            ob.close(timeout=0.5)
        assert "closed with records only in memory, not stored: 1 event" in caplog.text
    finally:
        locker.execute("COMMIT")
        locker.close()


def test_unwritable_seq_reservation_is_reported_and_storing_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / SEQ_FILE
    blocker.mkdir()  # something that is not a file where the reservation must go
    (blocker / "x").write_text("")
    ob = _open(tmp_path)
    seqs = [_add(ob) for _ in range(3)]
    assert wait_until(lambda: ob.health().held == 0, timeout=30)
    assert ob.health().fault is None
    assert [r.seq for r in ob.peek(10)] == seqs
    assert "cannot reserve seq numbers" in ob.health().seq_problem
    problems = outbox_health(ob.health(), {})["problems"]
    assert any("cannot reserve seq numbers" in p for p in problems)
    # the failing reservation is retried at the maintenance pace, not in a busy loop
    before = os.times()
    time.sleep(2.0)
    after = os.times()
    assert (after.user + after.system) - (before.user + before.system) < 1.0
    ob.close()


def test_memory_spill_overflow_drops_telemetry_before_events_and_counts_it(
    tmp_path: Path,
) -> None:
    ob = Outbox(tmp_path, max_bytes=1 << 20, now=time.time(), memory_max_records=10)
    locker = _lock(tmp_path)
    try:
        tel = [_add(ob, Kind.TELEMETRY) for _ in range(8)]
        events = [_add(ob, Kind.EVENT) for _ in range(6)]
        h = ob.health()
        assert h.held == 10
        assert h.dropped_in_memory == {"telemetry": 4}
        problems = outbox_health(h, {})["problems"]
        assert any("dropped 4 telemetry" in p for p in problems)
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert wait_until(lambda: ob.health().held == 0, timeout=60)
    stored = [r.seq for r in ob.peek(100)]
    assert stored == sorted(stored)
    assert [s for s in stored if s in events] == events  # every event kept
    assert len(set(tel) - set(stored)) == 4  # the 4 drops were telemetry
    assert ob.stats().drops["telemetry"] == 4
    ob.close()
    assert _open(tmp_path).stats().drops["telemetry"] == 4  # persisted
