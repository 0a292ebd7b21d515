"""The outbox's drop warnings list the kinds in the order they are dropped (telemetry
first, anomaly events last), not alphabetically: one group that dropped both read
"dropped the oldest 8 event, 43 telemetry", as if events had gone first."""

from __future__ import annotations

from collections import Counter

from edge_agent.reporting.outbox import _in_drop_order
from edge_agent.reporting.outbox_types import DROP_ORDER


def test_kinds_are_listed_in_drop_order() -> None:
    counts = Counter({"event": 8, "telemetry": 43, "status": 1, "ota": 2})
    assert _in_drop_order(counts) == "43 telemetry, 1 status, 2 ota, 8 event"
    assert [k.value for k in DROP_ORDER] == ["telemetry", "status", "ota", "event"]


def test_kinds_not_dropped_are_left_out() -> None:
    assert _in_drop_order(Counter({"event": 2, "telemetry": 0})) == "2 event"
    assert _in_drop_order(Counter()) == ""
