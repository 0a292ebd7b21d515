"""The supervisor with real threads: restarts inside the budget, gives up past it,
tells finished from failed, sees a loop that stops turning, stops against one deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from edge_agent.service.faults import Faults, InjectedFaultError
from edge_agent.service.health import liveness
from edge_agent.service.supervisor import ComponentState, Loop, Supervisor


def _until(pred: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout} s")


def _ticking(loop: Loop) -> None:
    while not loop.stop.is_set():
        loop.beat()
        loop.stop.wait(0.01)


def test_failing_component_is_restarted_and_counted_the_others_run_on() -> None:
    runs = []

    def flaky(loop: Loop) -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise RuntimeError(f"boom {len(runs)}")
        _ticking(loop)

    errors: list[tuple[str, str]] = []
    sup = Supervisor(
        budget=5, window_s=60, hang_after_s=30, on_error=lambda w, m: errors.append((w, m))
    )
    sup.add("flaky", flaky)
    sup.add("steady", _ticking)
    sup.start()
    st = _until(lambda: next(s for s in sup.statuses() if s.name == "flaky").restarts == 2)
    _until(lambda: sup.state("flaky") is ComponentState.RUNNING)
    assert st
    flaky_st = next(s for s in sup.statuses() if s.name == "flaky")
    assert flaky_st.last_error == "RuntimeError: boom 2"
    assert sup.state("steady") is ComponentState.RUNNING
    assert [w for w, _ in errors] == ["flaky", "flaky"]
    sup.request_stop()
    assert sup.join(time.monotonic() + 10) == []
    assert {s.state for s in sup.statuses()} == {ComponentState.STOPPED}


def test_past_the_budget_the_component_fails_for_good_and_gives_up_once() -> None:
    gave_up = threading.Event()

    def broken(loop: Loop) -> None:
        loop.beat()
        raise ValueError("always")

    sup = Supervisor(budget=2, window_s=60, hang_after_s=30)
    sup.add("broken", broken, on_give_up=gave_up.set)
    sup.add("steady", _ticking)
    sup.start()
    _until(lambda: sup.state("broken") is ComponentState.FAILED)
    assert gave_up.is_set()
    st = next(s for s in sup.statuses() if s.name == "broken")
    assert st.restarts == 2
    assert st.last_error == "ValueError: always"
    assert sup.state("steady") is ComponentState.RUNNING  # the rest keeps running
    sup.request_stop()
    sup.join(time.monotonic() + 10)


def test_returning_is_finished_only_while_running_and_failed_is_not_finished() -> None:
    sup = Supervisor(budget=1, window_s=60, hang_after_s=30)
    sup.add("done", lambda loop: None)

    def broken(loop: Loop) -> None:
        raise RuntimeError("crash")

    sup.add("crashing", broken)
    sup.start()
    _until(lambda: sup.state("done") is ComponentState.FINISHED)
    _until(lambda: sup.state("crashing") is ComponentState.FAILED)
    assert sup.all_finished(["done"])
    assert not sup.all_finished(["done", "crashing"])  # a crash never counts as "finished"
    assert not sup.all_finished([])
    sup.request_stop()
    sup.join(time.monotonic() + 5)


def test_a_loop_that_stops_turning_is_hung_and_withholds_liveness() -> None:
    release = threading.Event()

    def hangs(loop: Loop) -> None:
        loop.beat()
        release.wait()  # a backend call that does not return
        _ticking(loop)

    sup = Supervisor(budget=5, window_s=60, hang_after_s=0.3)
    sup.add("hangs", hangs)
    sup.add("steady", _ticking)
    sup.start()
    hung = _until(sup.hung)
    assert [h.name for h in hung] == ["hangs"]
    check = liveness(hung)
    assert not check.ok
    assert check.reason.startswith("hung: hangs has not turned for")
    release.set()
    _until(lambda: not sup.hung())
    assert liveness(sup.hung()).ok
    sup.request_stop()
    sup.join(time.monotonic() + 5)


def test_join_waits_for_all_at_once_against_one_deadline() -> None:
    def slow_to_stop(loop: Loop) -> None:
        loop.stop.wait()
        time.sleep(0.5)

    sup = Supervisor(budget=1, window_s=60, hang_after_s=30)
    for i in range(6):
        sup.add(f"s{i}", slow_to_stop)
    sup.start()
    t0 = time.monotonic()
    sup.request_stop()
    assert sup.join(t0 + 20) == []
    assert time.monotonic() - t0 < 2.5  # parallel: not 6 x 0.5 s one after the other


def test_join_names_what_is_still_running_at_the_deadline() -> None:
    never = threading.Event()
    sup = Supervisor(budget=1, window_s=60, hang_after_s=30)
    sup.add("stuck", lambda loop: never.wait())
    sup.start()
    sup.request_stop()
    assert sup.join(time.monotonic() + 0.2) == ["stuck"]
    never.set()


def test_fault_hook_raises_count_times_then_lets_the_loop_run() -> None:
    faults = Faults.parse("stream-a,2; hang:stream-b,3")
    stop = threading.Event()
    for _ in range(2):
        with pytest.raises(InjectedFaultError, match="stream-a"):
            faults.check("stream-a", stop)
    faults.check("stream-a", stop)  # spent
    faults.check("other", stop)
    stop.set()  # so the injected hang returns at once
    faults.check("stream-b", stop)
    faults.check("stream-b", stop)
    t0 = time.monotonic()
    faults.check("stream-b", stop)  # the 3rd heartbeat hangs until stop (already set)
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("spec", ["x,0", ",2", "x,many"])
def test_fault_hook_rejects_a_malformed_spec(spec: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - int() or ours, both say what
        Faults.parse(spec)
