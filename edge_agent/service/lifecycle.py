"""Pieces of the agent's own lifecycle: the guarded tick's bookkeeping and a parallel stop.

Kept out of `agent.py` so that the agent stays wiring.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_agent.backoff import RestartBudget
from edge_agent.service.events import ErrorLog
from edge_agent.service.supervisor import ComponentState, ComponentStatus

__all__ = ["TickGuard", "stop_in_parallel"]

log = logging.getLogger(__name__)


class TickGuard:
    """Failures of the 1 Hz tick: counted and shown like a component's; past the restart
    budget the tick is reported failed (DEGRADED), and it keeps trying."""

    def __init__(self, budget: RestartBudget) -> None:
        self._budget = budget
        self.failures = 0
        self.last_error = ""
        self.last_error_at: float | None = None
        self.spent = False

    def failed(self, e: Exception, errors: ErrorLog) -> None:
        self.failures += 1
        self.last_error, self.last_error_at = f"{type(e).__name__}: {e}", time.time()
        errors.record("tick", self.last_error)
        log.error("status tick failed (%d): %s", self.failures, self.last_error, exc_info=e)
        self.spent = not self._budget.allow(time.monotonic()) or self.spent

    def status(self, *, running: bool) -> ComponentStatus:
        state = ComponentState.FAILED if self.spent else ComponentState.RUNNING
        if not running:
            state = ComponentState.STOPPED
        return ComponentStatus(
            "tick", state, self.failures, self.last_error, self.last_error_at, None, False
        )


def stop_in_parallel(stops: list[Callable[[float], None]], deadline: float) -> None:
    """Call every `stop(timeout)` at once, each in its own thread, all bounded by `deadline`."""
    threads = []
    for stop in stops:

        def run(stop: Callable[[float], None] = stop) -> None:
            try:
                stop(max(0.0, deadline - time.monotonic()))
            except Exception:  # one failing stop must not stop the others
                log.exception("error while stopping")

        t = threading.Thread(target=run, name="stopper", daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
