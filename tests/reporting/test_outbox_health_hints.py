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


def test_a_hung_disk_is_a_problem_once_the_writer_is_stuck_long_enough() -> None:
    from dataclasses import replace

    from edge_agent.reporting.outbox_health import DISK_HUNG_S

    busy = replace(_health(None), writer_busy_s=1.5)  # a slow commit: not yet a problem
    assert outbox_health(busy, {})["problems"] == []
    hung = replace(_health(None), writer_busy_s=DISK_HUNG_S + 2.0)
    (problem,) = outbox_health(hung, {})["problems"]
    assert problem.startswith("outbox: the state disk has not finished a write for 12 s")
    assert "7 record(s) held in memory" in problem
    assert "check the storage device" in problem
