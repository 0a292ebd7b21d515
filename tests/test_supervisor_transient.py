"""A transient component (an evicted model's scheduler worker) leaves the supervisor's
table when it finishes; a plain one stays listed as finished."""

from __future__ import annotations

import threading
import time

from edge_agent.service.supervisor import ComponentState, Loop, Supervisor


def test_transient_component_is_forgotten_when_it_finishes() -> None:
    sup = Supervisor(budget=3, window_s=60, hang_after_s=5)
    release = threading.Event()

    def body(loop: Loop) -> None:
        while not release.is_set() and not loop.stop.is_set():
            loop.beat()
            time.sleep(0.01)

    sup.add("worker-1", body, transient=True)
    sup.add("plain", lambda _loop: None)
    sup.start()
    try:
        end = time.monotonic() + 60
        while sup.state("plain") is not ComponentState.FINISHED:
            assert time.monotonic() < end
            time.sleep(0.01)
        assert {c.name for c in sup.statuses()} == {"worker-1", "plain"}
        release.set()
        while "worker-1" in {c.name for c in sup.statuses()}:
            assert time.monotonic() < end
            time.sleep(0.01)
        assert [c.name for c in sup.statuses()] == ["plain"]
        sup.add("worker-1", body, transient=True)  # the name can be used again
    finally:
        sup.request_stop()
        assert sup.join(time.monotonic() + 10) == []
