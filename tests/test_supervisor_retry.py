"""A component past its restart budget is tried again later (slowly, with a fresh
budget), so a fault that outlasts the budget does not leave it down until the service
restarts; status says when the next try comes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.service.status import Snapshot, Verdict, assess
from edge_agent.service.supervisor import ComponentState, Loop, Supervisor
from tests.agentutil import AgentProc
from tests.test_status import state
from tests.test_supervision_e2e import _component, _config, _stream


def _until(pred: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout} s")


class _Cable:
    """A body that fails while the 'cable' is out and runs once it is back."""

    def __init__(self) -> None:
        self.plugged = threading.Event()
        self.turns = 0

    def body(self, loop: Loop) -> None:
        while not loop.stop.is_set():
            loop.beat()
            if not self.plugged.is_set():
                raise OSError("sensor cable out")
            self.turns += 1
            loop.stop.wait(0.01)


def test_a_failed_component_is_tried_again_with_a_fresh_budget_once_the_fault_clears() -> None:
    cable = _Cable()
    gave_up, retried = threading.Event(), threading.Event()
    sup = Supervisor(budget=1, window_s=600, hang_after_s=30, retry_failed_s=1.0)
    sup.add("stream-press", cable.body, on_give_up=gave_up.set, on_retry=retried.set)
    sup.start()
    try:
        _until(lambda: sup.state("stream-press") is ComponentState.FAILED)
        assert gave_up.is_set()
        st = next(s for s in sup.statuses() if s.name == "stream-press")
        assert st.retry_at is not None
        assert st.to_json()["retry_at"] == st.retry_at
        # The fault outlasts the budget: each slow retry fails and fails again.
        _until(retried.is_set)
        _until(lambda: sup.state("stream-press") is ComponentState.FAILED)
        assert cable.turns == 0
        cable.plugged.set()  # the fault clears: the next retry runs for good
        _until(lambda: cable.turns > 10)
        assert sup.state("stream-press") is ComponentState.RUNNING
        st = next(s for s in sup.statuses() if s.name == "stream-press")
        assert st.retry_at is None
    finally:
        sup.request_stop()
        assert sup.join(time.monotonic() + 10) == []


def test_without_retries_a_failed_component_stays_down_and_says_never() -> None:
    cable = _Cable()
    sup = Supervisor(budget=1, window_s=600, hang_after_s=30, retry_failed_s=None)
    sup.add("stream-press", cable.body)
    sup.start()
    try:
        _until(lambda: sup.state("stream-press") is ComponentState.FAILED)
        cable.plugged.set()
        time.sleep(1.5)  # a retry (were there one) would have come by now
        assert sup.state("stream-press") is ComponentState.FAILED
        st = next(s for s in sup.statuses() if s.name == "stream-press")
        assert st.retry_at is None
    finally:
        sup.request_stop()
        sup.join(time.monotonic() + 10)


def test_status_says_when_a_failed_component_is_tried_next() -> None:
    now = 1_000_000.0
    comp = {
        "name": "stream-press",
        "state": "failed",
        "restarts": 5,
        "last_error": "OSError: cable",
        "last_error_at": None,
        "hung": False,
        "retry_at": now + 125,
    }
    st = state(now, supervisor={"components": [comp]})
    a = assess(Snapshot("/var/lib/edge-agent", True, st, pid_alive=True), now)
    assert a.verdict is Verdict.DEGRADED
    want = "stream-press failed past its restart budget (5 restarts), next try in 2m05s"
    assert f"{want}: OSError: cable" in a.reasons, a.reasons


def test_a_stream_that_gave_up_is_revived_by_the_slow_retry_in_a_real_agent(
    tmp_path: Path,
    agents: list[AgentProc],
) -> None:
    """restart_budget 2: the 3rd failure gives the stream up (its source stopped); the
    retry 3 s later gets one more failure (the fault outlasts the budget) and then runs:
    the stream scores again, its error is cleared, and a stop still exits 0."""
    cfg = _config(
        tmp_path / "a.toml",
        _stream("press"),
        health="restart_budget = 2\nrestart_window_s = 600\nretry_failed_s = 3",
    )
    env = {"EDGE_AGENT_TEST_FAULT": "stream-press,4"}
    a = AgentProc(cfg, tmp_path / "state", tmp_path / "a.log", env)
    agents.append(a)

    def press(s: dict[str, Any]) -> dict[str, Any]:
        return next(x for x in s["streams"] if x["name"] == "press")

    st = a.until(lambda s: _component(s, "stream-press")["state"] == "failed" and s, 90, "given up")
    assert _component(st, "stream-press")["retry_at"] is not None
    assert press(st)["error"].startswith("scoring stopped"), press(st)
    w0 = press(st)["windows"]
    a.until(
        lambda s: (
            _component(s, "stream-press")["state"] == "running"
            and press(s)["windows"] > w0 + 10
            and press(s)["error"] == ""
            and press(s)["source_state"] == "running"
        ),
        90,
        "the stream runs and scores again after the slow retry",
    )
    assert a.stop() == 0, a.text()
    assert "trying again 3 s after it failed past its restart budget" in a.text()


def test_failed_is_shown_only_with_the_give_up_done_and_the_next_try_set() -> None:
    # A status written while the component gives up must not show it 'failed' without
    # what giving up does (the stream's error) or when it is tried again.
    cable = _Cable()
    seen_in_give_up: list[tuple[ComponentState, float | None]] = []
    sup = Supervisor(budget=1, window_s=600, hang_after_s=30, retry_failed_s=600.0)

    def give_up() -> None:
        st = next(s for s in sup.statuses() if s.name == "stream-press")
        seen_in_give_up.append((st.state, st.retry_at))

    sup.add("stream-press", cable.body, on_give_up=give_up)
    sup.start()
    try:
        _until(lambda: sup.state("stream-press") is ComponentState.FAILED)
        assert len(seen_in_give_up) == 1
        state_then, retry_then = seen_in_give_up[0]
        assert state_then is not ComponentState.FAILED
        assert retry_then is None
        st = next(s for s in sup.statuses() if s.name == "stream-press")
        assert st.retry_at is not None
        assert st.retry_at > time.time() + 500
    finally:
        sup.request_stop()
        sup.join(time.monotonic() + 10)
