"""Outbox semantics without a broker: seq, budget and drop order, corruption, threads."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_agent.errors import OutboxError
from edge_agent.reporting.outbox import (
    OUTBOX_FILE,
    ROW_OVERHEAD_BYTES,
    SEQ_BLOCK,
    Kind,
    Outbox,
)


def _open(d: Path, max_bytes: int = 1 << 20) -> Outbox:
    return Outbox(d, max_bytes=max_bytes, sync="always", now=1000.0)


def _add(ob: Outbox, kind: Kind, body: bytes = b"x" * 36, now: float = 1000.0) -> int:
    return ob.append(kind, f"edge/d/{kind.value}", lambda s: body, now=now)


def test_seq_is_monotonic_across_reopen_and_never_reused_after_deletes(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    seqs = [_add(ob, Kind.EVENT) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    ob.delete(r.id for r in ob.peek(10))
    ob.close()
    ob = _open(tmp_path)
    assert _add(ob, Kind.EVENT) == 6
    assert ob.stats().depth == 1


def test_seq_continues_past_a_lost_database(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    last = [_add(ob, Kind.EVENT) for _ in range(3)][-1]
    ob.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / OUTBOX_FILE}{suffix}").unlink(missing_ok=True)
    ob = _open(tmp_path)
    nxt = _add(ob, Kind.EVENT)
    assert last < nxt <= last + SEQ_BLOCK + 1


def test_peek_sends_status_first_then_append_order_and_excludes_inflight(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    e1 = _add(ob, Kind.EVENT)
    t1 = _add(ob, Kind.TELEMETRY)
    st = _add(ob, Kind.STATUS)
    recs = ob.peek(10)
    assert [r.seq for r in recs] == [st, e1, t1]
    assert [r.seq for r in ob.peek(10, exclude=[recs[0].id])] == [e1, t1]


def test_new_status_supersedes_undelivered_status(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    _add(ob, Kind.STATUS)
    s2 = _add(ob, Kind.STATUS)
    assert [r.seq for r in ob.peek(10)] == [s2]
    assert ob.stats().drops[Kind.STATUS.value] == 0  # superseded is not a drop


def test_budget_drops_oldest_telemetry_first_then_others_events_last(tmp_path: Path) -> None:
    size = len(b"edge/d/event") + 36 + ROW_OVERHEAD_BYTES  # every kind's topic is close
    ob = _open(tmp_path, max_bytes=size * 6 + 10)
    ev = [_add(ob, Kind.EVENT) for _ in range(2)]
    tel = [_add(ob, Kind.TELEMETRY) for _ in range(2)]
    ota = _add(ob, Kind.OTA)
    _add(ob, Kind.TELEMETRY)
    # Full now. Each new event pushes out the oldest telemetry first.
    ev += [_add(ob, Kind.EVENT) for _ in range(3)]
    left = {r.seq: r.kind for r in ob.peek(100)}
    assert all(s in left for s in ev)
    assert tel[0] not in left
    assert tel[1] not in left
    st = ob.stats()
    assert st.drops["telemetry"] == 3
    assert st.drops["event"] == 0
    # No telemetry left: OTA goes next, events still kept.
    ev.append(_add(ob, Kind.EVENT))
    left = {r.seq for r in ob.peek(100)}
    assert ota not in left
    assert all(s in left for s in ev)
    # Only events left: the oldest event goes, and that is counted too.
    ev.append(_add(ob, Kind.EVENT))
    st = ob.stats()
    assert st.drops == {"event": 1, "telemetry": 3, "ota": 1, "status": 0}
    assert st.bytes <= size * 6 + 10
    ob.close()
    # Drop counters are persisted.
    assert _open(tmp_path, max_bytes=size * 6 + 10).stats().drops["telemetry"] == 3


def test_oversized_record_is_refused_clearly_and_nothing_changes(tmp_path: Path) -> None:
    ob = _open(tmp_path, max_bytes=1000)
    _add(ob, Kind.EVENT)
    with pytest.raises(OutboxError, match="exceeds the limit"):
        _add(ob, Kind.EVENT, body=b"y" * 2000)
    assert ob.stats().depth == 1
    assert _add(ob, Kind.EVENT) == 2


def test_corrupt_outbox_is_moved_aside_and_a_fresh_one_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ob = _open(tmp_path)
    last = _add(ob, Kind.EVENT)
    ob.close()
    db = tmp_path / OUTBOX_FILE
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"this is not an sqlite database, it is garbage" * 100)
    with caplog.at_level(logging.ERROR):
        ob = _open(tmp_path)
    aside = list(tmp_path.glob(f"{OUTBOX_FILE}.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not")
    assert "is corrupt" in caplog.text
    assert str(aside[0]) in caplog.text
    assert _add(ob, Kind.EVENT) > last
    assert ob.stats().depth == 1


def test_concurrent_appends_get_unique_seqs(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    out: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(50):
            s = _add(ob, Kind.TELEMETRY)
            with lock:
                out.append(s)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == list(range(1, 201))
    assert ob.stats().depth == 200


def test_outbox_uses_wal(tmp_path: Path) -> None:
    _open(tmp_path).close()
    with sqlite3.connect(tmp_path / OUTBOX_FILE) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
