"""Each outbox storage fault in status says what to do, not only what SQLite said."""

from __future__ import annotations

import pytest

from edge_agent.reporting.outbox_health import outbox_health
from edge_agent.reporting.outbox_types import OutboxHealth


def _health(fault: str | None, detail: str = "") -> OutboxHealth:
    return OutboxHealth(fault, 1_700_000_000.0, detail, 7, 2100, {}, None)


@pytest.mark.parametrize(
    ("fault", "detail", "fix"),
    [
        ("database locked", "database is locked", "close it"),
        ("disk full", "database or disk is full", "free space on the state dir's filesystem"),
        ("permission denied", "attempt to write a readonly database", "chown -R"),
        ("I/O error", "disk I/O error", "check the storage device"),
    ],
)
def test_a_storage_fault_names_its_fix(fault: str, detail: str, fix: str) -> None:
    (problem,) = outbox_health(_health(fault, detail), {})["problems"]
    assert problem.startswith(f"outbox: {fault} since "), problem
    assert f"7 record(s) held in memory ({detail}); " in problem, problem
    assert fix in problem, problem


def test_no_fault_no_problem() -> None:
    assert outbox_health(_health(None), {})["problems"] == []
