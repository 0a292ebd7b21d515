"""Stepped components (the streams) live as threaded ones do, on the shared workers:
restarted inside the budget, failed past it and tried again later, finished at the end
of their work, shown hung when a turn does not return (and the others keep turning),
stopped against one deadline. Real threads; waits are generous bounds, never asserted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edge_agent.service.faults import Faults
from edge_agent.service.supervisor import ComponentState, ComponentStatus, Loop, Supervisor
from tests.waits import until


class _Task:
    """Turns every 10 ms; raises at the turns listed in `raise_at`; done after `last`."""

    def __init__(self, raise_at: set[int] | None = None, last: int | None = None) -> None:
        self.turns = 0
        self.raise_at = raise_at or set()
        self.last = last
        self.wake: Callable[[], None] | None = None

    def set_waker(self, wake: Callable[[], None]) -> None:
        self.wake = wake

    def step(self, loop: Loop) -> float | None:
        loop.beat()
        self.turns += 1
        if self.turns in self.raise_at:
            raise RuntimeError(f"boom at turn {self.turns}")
        if self.last is not None and self.turns >= self.last:
            return None
        return 0.01


def _status(sup: Supervisor, name: str) -> ComponentStatus:
    return next(s for s in sup.statuses() if s.name == name)


def _stop(sup: Supervisor) -> list[str]:
    sup.request_stop()
    return sup.join(time.monotonic() + 10)


def test_a_failing_stepped_component_is_restarted_and_the_others_turn_on() -> None:
    restarts: list[int] = []
    sup = Supervisor(budget=5, window_s=60, hang_after_s=30, turn_workers=1)
    flaky, steady = _Task(raise_at={3, 4}), _Task()
    sup.add_stepped("flaky", flaky, on_restart=lambda: restarts.append(flaky.turns))
    sup.add_stepped("steady", steady)
    before = threading.active_count()
    sup.start()
    assert threading.active_count() - before == 1, "one worker for both"
    until(lambda: _status(sup, "flaky").restarts == 2 and flaky.turns > 6, "restarted twice")
    assert restarts == [3, 4]  # after each failure, before the next turn
    assert sup.state("flaky") is ComponentState.RUNNING
    assert _status(sup, "flaky").last_error == "RuntimeError: boom at turn 4"
    assert steady.turns > 6
    assert sup.state("steady") is ComponentState.RUNNING
    assert _stop(sup) == []
    assert {s.state for s in sup.statuses()} == {ComponentState.STOPPED}


def test_past_its_budget_a_stepped_component_fails_and_is_tried_again_later() -> None:
    gave_up, retried = threading.Event(), threading.Event()
    sup = Supervisor(budget=1, window_s=60, hang_after_s=30, retry_failed_s=0.3)
    broken = _Task(raise_at={1, 2})  # works from turn 3 on: after the retry
    sup.add_stepped("broken", broken, on_give_up=gave_up.set, on_retry=retried.set)
    sup.start()
    until(gave_up.is_set, "gave up")
    until(retried.is_set, "tried again after retry_failed_s")
    until(lambda: broken.turns > 4, "turns again")
    assert sup.state("broken") is ComponentState.RUNNING
    assert _status(sup, "broken").restarts == 2  # one restart, then the retry
    assert _status(sup, "broken").retry_at is None
    assert _stop(sup) == []


def test_a_stepped_component_that_is_done_is_finished() -> None:
    sup = Supervisor(budget=1, window_s=60, hang_after_s=30)
    sup.add_stepped("replay", _Task(last=3))
    sup.start()
    until(lambda: sup.all_finished(["replay"]), "finished")
    assert _stop(sup) == []
    assert sup.state("replay") is ComponentState.FINISHED


def test_a_turn_that_never_returns_shows_hung_and_the_others_keep_turning() -> None:
    """One worker, and the first component's turn blocks (an injected hang: a backend
    call that does not return): tend() gives the others a worker of their own."""
    sup = Supervisor(
        budget=1,
        window_s=60,
        hang_after_s=0.5,
        turn_workers=1,
        faults=Faults({}, {"stuck": 2}),
    )
    stuck, other = _Task(), _Task()
    sup.add_stepped("stuck", stuck)
    sup.add_stepped("other", other)
    sup.start()
    until(lambda: _status(sup, "stuck").hung, "the stuck one shows hung")
    turns = other.turns

    def tended() -> bool:
        sup.tend()  # as the agent's tick does
        return other.turns > turns + 10

    until(tended, "the other turns again")
    assert not _status(sup, "other").hung
    assert [s.name for s in sup.hung()] == ["stuck"]
    assert _stop(sup) == []  # the injected hang ends when the agent stops


def test_stop_while_waiting_out_a_backoff_ends_stopped() -> None:
    sup = Supervisor(budget=5, window_s=60, hang_after_s=30)
    sup.add_stepped("flaky", _Task(raise_at={1}))
    sup.start()
    until(lambda: sup.state("flaky") is ComponentState.RESTARTING, "waiting out its backoff")
    assert _stop(sup) == []
    assert sup.state("flaky") is ComponentState.STOPPED
