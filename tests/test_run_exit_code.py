"""`edge-agent run`'s exit code: a stop that was asked for is a success for systemd."""

from __future__ import annotations

from edge_agent.commands.run import exit_code


def test_a_requested_stop_exits_0_even_after_a_stream_gave_up() -> None:
    assert exit_code("SIGTERM", failed=True) == 0
    assert exit_code("SIGINT", failed=True) == 0


def test_a_run_that_ended_on_its_own_with_a_failed_stream_exits_1() -> None:
    assert exit_code("duration 10 s reached", failed=True) == 1
    assert exit_code("all sources finished", failed=True) == 1
    assert exit_code("120 windows scored (--max-windows 100)", failed=True) == 1


def test_nothing_failed_exits_0() -> None:
    assert exit_code("SIGTERM", failed=False) == 0
    assert exit_code("duration 10 s reached", failed=False) == 0
