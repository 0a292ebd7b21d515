"""The disk budget's drop order holds inside one group commit: a group that brings an
event and telemetry into a full outbox drops telemetry (its own, if none is stored)
before any stored event. Found by the 4 MB state disk test: at full speed the first
group commit that hit the budget dropped events to make room for the group's own
telemetry."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from edge_agent.reporting import outbox_db
from edge_agent.reporting.outbox_types import DROP_ORDER, LANE, Kind
from edge_agent.reporting.spill import Held

SIZE = 100
ORDER = [k.value for k in DROP_ORDER]


def _held(seq: int, kind: Kind) -> Held:
    return Held(seq, kind.value, f"edge/d/{kind.value}", b"x" * 36, False, 1000.0 + seq, SIZE)


def _store(
    db: sqlite3.Connection, batch: list[Held], depth: int, nbytes: int
) -> outbox_db.GroupResult:
    return outbox_db.store_group(
        db,
        batch,
        lane=lambda kind: LANE[Kind(kind)],
        drop_order=ORDER,
        replaces=Kind.STATUS.value,
        max_bytes=4 * SIZE,
        depth=depth,
        nbytes=nbytes,
        next_seq=batch[-1].seq + 1,
        drop_totals=None,
    )


def _kinds(db: sqlite3.Connection) -> Counter[str]:
    return Counter(k for (k,) in db.execute("SELECT kind FROM records"))


def test_a_group_drops_its_own_telemetry_before_a_stored_event(tmp_path: Path) -> None:
    db = outbox_db.connect(tmp_path / "outbox.db")
    try:
        res = _store(db, [_held(i, Kind.EVENT) for i in range(1, 5)], 0, 0)  # full: 4 events
        assert res.drops == Counter()
        res = _store(db, [_held(5, Kind.EVENT), _held(6, Kind.TELEMETRY)], res.depth, res.nbytes)
        # one over: the group's telemetry goes, then the oldest event (the previous
        # code dropped two events and kept the telemetry)
        assert res.drops == Counter({"telemetry": 1, "event": 1})
        assert _kinds(db) == Counter({"event": 4})
        seqs = [s for (s,) in db.execute("SELECT seq FROM records ORDER BY seq")]
        assert seqs == [2, 3, 4, 5]  # the oldest event went, the new one stayed
        assert (res.depth, res.nbytes) == (4, 4 * SIZE)
        assert outbox_db.counter(db, "drops.telemetry") == 1
        assert outbox_db.counter(db, "drops.event") == 1
    finally:
        db.close()


def test_stored_telemetry_still_goes_first_and_the_budget_holds_after_the_group(
    tmp_path: Path,
) -> None:
    db = outbox_db.connect(tmp_path / "outbox.db")
    try:
        first = [_held(1, Kind.TELEMETRY), _held(2, Kind.EVENT), _held(3, Kind.TELEMETRY)]
        res = _store(db, first, 0, 0)
        group = [_held(4, Kind.EVENT), _held(5, Kind.EVENT), _held(6, Kind.EVENT)]
        res = _store(db, group, res.depth, res.nbytes)
        assert res.drops == Counter({"telemetry": 2})
        assert _kinds(db) == Counter({"event": 4})
        assert res.nbytes <= 4 * SIZE
    finally:
        db.close()
