"""The memory spill (pure): FIFO order, bounds, drop order with events last, supersede, pins."""

from __future__ import annotations

import pytest

from edge_agent.reporting.spill import Held, Spill

ORDER = ("telemetry", "status", "ota", "event")


def _h(seq: int, kind: str, size: int = 100) -> Held:
    return Held(seq, kind, f"edge/d/{kind}", b"x", False, float(seq), size)


def test_records_leave_in_seq_order() -> None:
    sp = Spill(max_records=10, max_bytes=10_000, drop_order=ORDER)
    for i in range(1, 6):
        sp.add(_h(i, "event" if i % 2 else "telemetry"))
    assert [h.seq for h in sp.take(10)] == [1, 2, 3, 4, 5]
    sp.release(sp.take(2))
    assert [h.seq for h in sp.take(10)] == [3, 4, 5]
    assert sp.bytes == 300


def test_overflow_drops_oldest_telemetry_first_and_events_last_counting_each() -> None:
    sp = Spill(max_records=4, max_bytes=10_000, drop_order=ORDER)
    sp.add(_h(1, "event"))
    sp.add(_h(2, "telemetry"))
    sp.add(_h(3, "ota"))
    sp.add(_h(4, "telemetry"))
    assert [h.seq for h in sp.add(_h(5, "event"))] == [2]
    assert [h.seq for h in sp.add(_h(6, "event"))] == [4]
    assert [h.seq for h in sp.add(_h(7, "event"))] == [3]
    # only events left: now the oldest event goes
    assert [h.seq for h in sp.add(_h(8, "event"))] == [1]
    assert dict(sp.dropped) == {"telemetry": 2, "ota": 1, "event": 1}
    assert [h.seq for h in sp.take(10)] == [5, 6, 7, 8]


def test_byte_bound_is_kept_too() -> None:
    sp = Spill(max_records=100, max_bytes=350, drop_order=ORDER)
    for i in range(1, 5):
        sp.add(_h(i, "event"))
    assert sp.bytes <= 350
    assert len(sp) == 3
    assert sp.dropped["event"] == 1


def test_newer_status_supersedes_held_status_without_counting_a_drop() -> None:
    sp = Spill(max_records=10, max_bytes=10_000, drop_order=ORDER)
    sp.add(_h(1, "status"))
    sp.add(_h(2, "event"))
    sp.add(_h(3, "status"), supersedes="status")
    assert [h.seq for h in sp.take(10)] == [2, 3]
    assert not sp.dropped


def test_pinned_records_being_stored_are_neither_dropped_nor_superseded() -> None:
    sp = Spill(max_records=3, max_bytes=10_000, drop_order=ORDER)
    sp.add(_h(1, "telemetry"))
    sp.add(_h(2, "status"))
    sp.pin(2)  # the writer is storing both
    assert sp.add(_h(3, "status"), supersedes="status") == []
    assert [h.seq for h in sp.take(10)] == [1, 2, 3]  # the pinned status stays
    # over the bound: the victim is the first unpinned one in drop order, not telemetry 1
    assert [h.seq for h in sp.add(_h(4, "event"))] == [3]
    assert [h.seq for h in sp.take(10)] == [1, 2, 4]
    sp.release(sp.take(2))
    assert [h.seq for h in sp.take(10)] == [4]


def test_a_spill_needs_room_for_one_record() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        Spill(max_records=0, max_bytes=10, drop_order=ORDER)
