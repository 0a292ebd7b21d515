"""The supervisor: runs every long-lived loop of the agent in its own thread.

A component is a body `body(loop)` that runs until `loop.stop` is set and calls
`loop.beat()` at every turn (also when it found nothing to do, e.g. a read timeout).
What happens when it ends:

- it returns while the agent runs: `finished` (e.g. a replay at the end of its file);
- it raises: the error is logged, counted and kept for status; the component is
  restarted after an exponential backoff, as long as its restart budget (`budget`
  restarts within `window_s`) allows; past the budget it is `failed`, `on_give_up` runs
  (e.g. stop the stream's source) and the rest of the agent keeps running (DEGRADED);
  every `retry_failed_s` (default 5 min) a failed component is tried again with a fresh
  budget (`on_retry` first), so a fault that outlasts the budget (a sensor cable
  pulled for ten minutes) does not leave the part down until the next service restart;
- it stops beating for longer than its `hang_after_s` while running: `hung` (a
  backend call or a storage write that does not return). The agent withholds
  systemd's WATCHDOG=1 then, so a wedged process gets restarted.

A stepped component (`add_stepped`: the streams) has no thread of its own: it runs one
turn at a time on the supervisor's few shared workers (service/turns.py), with the same
life as above; its backoff and retry waits are timers, not sleeping threads.

No exception of a component reaches the main thread. `join(deadline)` waits for all
components at once against one deadline (a parallel stop, not one timeout each).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.backoff import Backoff, RestartBudget
from edge_agent.service.faults import Faults
from edge_agent.service.turns import TurnPool

__all__ = [
    "ComponentState",
    "ComponentStatus",
    "Loop",
    "Stepped",
    "Supervisor",
    "ThreadDiedError",
    "watch",
]

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_FAILED_S = 300.0  # a component past its budget is tried again this often


class ComponentState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"  # failed, waiting out its backoff
    FAILED = "failed"  # restart budget spent: stays down, the agent is DEGRADED
    FINISHED = "finished"  # its work is done (end of data)
    STOPPED = "stopped"  # the agent stops


@dataclass(frozen=True)
class ComponentStatus:
    """One component for status.json (`supervisor.components[]`)."""

    name: str
    state: ComponentState
    restarts: int
    last_error: str
    last_error_at: float | None  # wall clock (s since the epoch)
    heartbeat_age_s: float | None  # None: not running
    hung: bool
    retry_at: float | None = None  # failed: when it is tried again (wall clock); None: never

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "heartbeat_age_s": None
            if self.heartbeat_age_s is None
            else round(self.heartbeat_age_s, 3),
            "hung": self.hung,
            "retry_at": self.retry_at,
        }


class Loop:
    """What a component's body gets: the shared stop event and its own heartbeat."""

    def __init__(self, name: str, stop: threading.Event, faults: Faults) -> None:
        self.name = name
        self.stop = stop
        self._faults = faults
        self.beat_at = time.monotonic()

    def beat(self, *, busy_s: float = 0.0) -> None:
        """One turn of the loop (cheap: a clock read, plus the test hook when set).
        `busy_s`: for a watched thread, how long it has been inside its current step; the
        turn dates from when that step began, so a step that blocks ages the heartbeat."""
        self.beat_at = time.monotonic() - max(0.0, busy_s)
        self._faults.check(self.name, self.stop)


Body = Callable[[Loop], None]
Hook = Callable[[], None]


class Stepped(Protocol):
    """A component run in turns (see service/turns.py for what `step` returns)."""

    def step(self, loop: Loop) -> float | None:
        """One bounded turn: beat, do what is ready, say when the next turn is wanted
        (YIELD, 0.0, seconds at the latest, or None: done). Raises on a fault."""

    def set_waker(self, wake: Callable[[], None]) -> None:
        """`wake()` brings the next turn forward (e.g. called when samples arrive)."""


@dataclass
class _Component:
    name: str
    body: Body | None  # None: a stepped one (`task`)
    on_restart: Hook | None
    on_give_up: Hook | None
    on_retry: Hook | None
    hang_after_s: float
    budget: RestartBudget
    loop: Loop
    backoff: Backoff = field(default_factory=lambda: Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S))
    state: ComponentState = ComponentState.STARTING
    restarts: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    retry_at: float | None = None
    thread: threading.Thread | None = None
    transient: bool = False  # forgotten when it finishes (e.g. an evicted model's worker)
    task: Stepped | None = None  # run in turns on the shared workers instead of a thread
    started: float = 0.0  # monotonic: when its current run began
    resume_at: float | None = None  # a stepped one waits out a backoff or retry until then
    in_turn: bool = False  # a stepped one is inside a turn now


class Supervisor:
    def __init__(
        self,
        *,
        budget: int,
        window_s: float,
        hang_after_s: float,
        faults: Faults | None = None,
        on_error: Callable[[str, str], None] | None = None,
        retry_failed_s: float | None = RETRY_FAILED_S,
        turn_workers: int | None = None,
    ) -> None:
        """`retry_failed_s`: seconds before a component past its budget is tried again
        (None: never). `turn_workers`: threads that run the stepped components (default
        one per CPU)."""
        if hang_after_s <= 0:
            raise ValueError("hang_after_s must be positive")
        if retry_failed_s is not None and retry_failed_s <= 0:
            raise ValueError("retry_failed_s must be positive")
        self._retry_failed_s = retry_failed_s
        self.stop_event = threading.Event()
        self._budget = (budget, window_s)
        self._hang_after_s = hang_after_s
        self._faults = faults or Faults({}, {})
        self._on_error = on_error
        self._components: dict[str, _Component] = {}
        self._lock = threading.Lock()
        self._started = False
        self.turns = TurnPool(turn_workers, name="turns")
        # The CPUs the process may use, for every component's thread (see _run)
        self._cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    @property
    def faults(self) -> Faults:
        return self._faults

    def add(
        self,
        name: str,
        body: Body,
        *,
        on_restart: Hook | None = None,
        on_give_up: Hook | None = None,
        on_retry: Hook | None = None,
        hang_after_s: float | None = None,
        transient: bool = False,
    ) -> None:
        """Register a component (before or after start(); it starts at once if running).
        `on_retry` undoes `on_give_up` before a failed component is tried again (default:
        `on_restart`). A `transient` one is dropped from the table when it finishes, so
        components that come and go (one per loaded model) do not pile up in status."""
        self._register(
            name,
            body,
            None,
            (on_restart, on_give_up, on_retry),
            hang_after_s=hang_after_s,
            transient=transient,
        )

    def add_stepped(
        self,
        name: str,
        task: Stepped,
        *,
        on_restart: Hook | None = None,
        on_give_up: Hook | None = None,
        on_retry: Hook | None = None,
        hang_after_s: float | None = None,
    ) -> None:
        """Register a component run in turns on the shared workers (see `add` for the
        hooks); it lives, fails, restarts and is retried as a threaded one does."""
        self._register(
            name,
            None,
            task,
            (on_restart, on_give_up, on_retry),
            hang_after_s=hang_after_s,
            transient=False,
        )

    def _register(
        self,
        name: str,
        body: Body | None,
        task: Stepped | None,
        hooks: tuple[Hook | None, Hook | None, Hook | None],
        *,
        hang_after_s: float | None,
        transient: bool,
    ) -> None:
        """`hooks`: on_restart, on_give_up, on_retry."""
        if name in self._components:
            raise ValueError(f"component {name!r} registered twice")
        c = _Component(
            name,
            body,
            *hooks,
            hang_after_s or self._hang_after_s,
            RestartBudget(*self._budget),
            Loop(name, self.stop_event, self._faults),
            transient=transient,
            task=task,
        )
        with self._lock:
            self._components[name] = c
        if self._started:
            self._spawn(c)

    def start(self) -> None:
        self._started = True
        for c in list(self._components.values()):
            self._spawn(c)

    def _spawn(self, c: _Component) -> None:
        if c.task is not None:
            c.task.set_waker(self.turns.add(c.name, lambda: self._turn(c)).wake)
            self.turns.start()  # (once: its threads come with the first stepped component)
            return
        c.thread = threading.Thread(target=self._run, args=(c,), name=c.name, daemon=True)
        c.thread.start()

    def tend(self, now: float | None = None) -> None:
        """Called periodically (the agent's tick): a turn stuck in a call that does not
        return gets its worker replaced, so the other stepped components keep going."""
        self.turns.tend(now)

    def _run(self, c: _Component) -> None:
        if self._cpus is not None and os.sched_getaffinity(0) != self._cpus:
            # A thread inherits its creator's CPU affinity: a model's scheduler started
            # by a request of the endpoint (whose connection threads share one CPU)
            # must not stay on that CPU for the rest of the run.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self._cpus)
        stop = self.stop_event
        while not stop.is_set():
            c.started = time.monotonic()
            c.loop.beat_at = c.started
            c.state = ComponentState.RUNNING
            assert c.body is not None  # (a stepped one is never run here)
            try:
                c.body(c.loop)
            except Exception as e:  # noqa: BLE001 - a component's bug must not end the process
                if stop.is_set():
                    log.info("%s ended while stopping: %r", c.name, e)
                    break
                delay = self._failed_once(c, e)
                if delay is not None:
                    if stop.wait(delay):
                        break
                    self._hook(c, c.on_restart, "on_restart")
                    continue
                if self._retry_failed_s is None or stop.wait(self._retry_failed_s):
                    self._no_retry(c)
                    return
                self._retry(c)
                continue
            self._ended(c)
            return
        c.state = ComponentState.STOPPED

    def _turn(self, c: _Component) -> float | None:
        """One turn of a stepped component, with _run's life: its answer for the pool
        (service/turns.py), or None when the component is done."""
        stop = self.stop_event
        if stop.is_set():
            self._stopped(c)
            return None
        now = time.monotonic()
        if c.resume_at is not None:  # waiting out a backoff or the retry of a failed one
            if now < c.resume_at:
                return c.resume_at - now  # woken early (e.g. by its source): wait on
            c.resume_at = None
            if c.state is ComponentState.FAILED:
                self._retry(c)
            else:
                self._hook(c, c.on_restart, "on_restart")
        if c.state is not ComponentState.RUNNING:
            c.started = c.loop.beat_at = time.monotonic()
            c.state = ComponentState.RUNNING
        assert c.task is not None
        c.in_turn = True
        try:
            nxt = c.task.step(c.loop)
        except Exception as e:  # noqa: BLE001 - a component's bug must not end the process
            if stop.is_set():
                log.info("%s ended while stopping: %r", c.name, e)
                c.state = ComponentState.STOPPED
                return None
            delay = self._failed_once(c, e)
            if delay is None:
                delay = self._retry_failed_s
                if delay is None:
                    self._no_retry(c)
                    return None
            c.resume_at = time.monotonic() + delay
            return delay
        finally:
            c.in_turn = False
        if nxt is None:
            self._ended(c)
        return nxt

    def _stopped(self, c: _Component) -> None:
        """The agent stops: a stepped component outside its turn ends as _run would."""
        if c.state is ComponentState.FAILED:
            self._no_retry(c)
        elif c.state is not ComponentState.FINISHED:
            c.state = ComponentState.STOPPED

    def _ended(self, c: _Component) -> None:
        """Its body returned (or its last turn said done)."""
        c.state = ComponentState.STOPPED if self.stop_event.is_set() else ComponentState.FINISHED
        if c.state is ComponentState.FINISHED:
            log.info("%s finished", c.name)
            if c.transient:
                with self._lock:
                    self._components.pop(c.name, None)

    def _failed_once(self, c: _Component, e: Exception) -> float | None:
        """Record a failure: seconds to wait before the restart (RESTARTING), or None
        when the budget is spent (FAILED, on_give_up run, retry_at set)."""
        msg = f"{type(e).__name__}: {e}"
        c.last_error, c.last_error_at = msg, time.time()
        now = time.monotonic()
        if now - c.started > self._budget[1]:
            c.backoff.reset()  # it ran well for a while: start the backoff from the bottom
        if self._on_error is not None:
            self._on_error(c.name, msg)
        if not c.budget.allow(now):
            retry = self._retry_failed_s
            log.error(
                "%s failed %d times within %.0f s, %s: %s",
                c.name,
                self._budget[0] + 1,
                self._budget[1],
                "not restarted again" if retry is None else f"tried again in {retry:.0f} s",
                msg,
                exc_info=e,
            )
            self._hook(c, c.on_give_up, "on_give_up")
            # Failed only now, with when it is tried again: a status written meanwhile
            # showed 'failed' without the give-up's effects (the stream's error) or retry_at.
            if retry is not None:
                c.retry_at = time.time() + retry
            c.state = ComponentState.FAILED
            return None
        c.restarts += 1
        c.state = ComponentState.RESTARTING
        delay = c.backoff.next_delay(random.random())  # noqa: S311 - jitter, not crypto
        log.error("%s failed, restart %d in %.1f s: %s", c.name, c.restarts, delay, msg, exc_info=e)
        return delay

    def _no_retry(self, c: _Component) -> None:
        """A failed component that is not tried again (never, or the agent stops)."""
        if self._retry_failed_s is not None:
            c.retry_at = None
            c.state = ComponentState.STOPPED

    def _retry(self, c: _Component) -> None:
        """`retry_failed_s` after it failed: a fresh budget, then on_retry."""
        c.retry_at = None
        c.budget = RestartBudget(*self._budget)
        c.backoff.reset()
        c.restarts += 1
        log.warning(
            "%s: trying again %.0f s after it failed past its restart budget",
            c.name,
            self._retry_failed_s,
        )
        self._hook(c, c.on_retry or c.on_restart, "on_retry")

    def _hook(self, c: _Component, hook: Hook | None, what: str) -> None:
        if hook is None:
            return
        try:
            hook()
        except Exception:  # logged; the next run of the body will show what is wrong
            log.exception("%s: %s failed", c.name, what)

    # -- stopping ---------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop_event.set()

    def join(self, deadline: float) -> list[str]:
        """Wait (monotonic `deadline`) for every component; names still running after it
        (a thread alive, or a stepped one inside a turn)."""
        self.turns.close()  # workers end after their turn; parked components get no more
        for c in list(self._components.values()):
            if c.thread is not None:
                c.thread.join(max(0.0, deadline - time.monotonic()))
        self.turns.join(deadline)
        left = []
        for c in list(self._components.values()):
            if c.task is not None and not c.in_turn and self.stop_event.is_set():
                self._stopped(c)
            if (c.thread and c.thread.is_alive()) or c.in_turn:
                left.append(c.name)
        return left

    # -- looking ------------------------------------------------------------------------
    def state(self, name: str) -> ComponentState:
        return self._components[name].state

    def statuses(self, now: float | None = None) -> list[ComponentStatus]:
        t = time.monotonic() if now is None else now
        out = []
        for c in list(self._components.values()):
            running = c.state is ComponentState.RUNNING
            age = t - c.loop.beat_at if running else None
            out.append(
                ComponentStatus(
                    c.name,
                    c.state,
                    c.restarts,
                    c.last_error,
                    c.last_error_at,
                    age,
                    age is not None and age > c.hang_after_s,
                    c.retry_at if c.state is ComponentState.FAILED else None,
                )
            )
        return out

    def hung(self, now: float | None = None) -> list[ComponentStatus]:
        """Running components whose loop has not turned within their `hang_after_s`."""
        return [s for s in self.statuses(now) if s.hung]

    def all_finished(self, names: list[str]) -> bool:
        """True when every named component finished its work (not failed, not stopped)."""
        return bool(names) and all(
            self._components[n].state is ComponentState.FINISHED for n in names
        )


class ThreadDiedError(RuntimeError):
    """A thread the supervisor watches (it does not run it) ended on its own."""


WATCH_PERIOD_S = 1.0


def watch(alive: Callable[[], bool], what: str, busy: Callable[[], float] | None = None) -> Body:
    """A body for a thread owned elsewhere (an HTTP server, the MQTT client): beats every
    second and raises when `alive()` turns False, so the supervisor counts it, shows it
    and restarts it through the component's `on_restart`. `busy()` (seconds the thread
    has spent in its current step) dates each beat back, so a thread blocked in one
    call goes `hung` like a supervised loop would."""

    def body(loop: Loop) -> None:
        while not loop.stop.is_set():
            loop.beat(busy_s=busy() if busy is not None else 0.0)
            if not alive():
                raise ThreadDiedError(f"{what} thread ended unexpectedly")
            loop.stop.wait(WATCH_PERIOD_S)

    return body
