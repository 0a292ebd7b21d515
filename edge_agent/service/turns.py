"""A few worker threads that take turns running many stepped components.

A stepped component does one bounded turn of its work per call (a stream: take what
its source queued, check sensor health, score, emit) and says when it wants its next
turn: `YIELD` (again, after everything else that is ready: a stream at max speed),
`0.0` (again now), a number of seconds (at the latest then, or as soon as `wake()` is
called: a stream waiting for samples), or None (its work is done). Threads grow with
the CPUs, not with the streams: 64 streams cost the same few threads as one.

Why: with a thread per stream, 64 streams at max speed took their turns on 64
threads, each turn on data another thread had left in the cache and after a GIL
hand-off; the CPU per window was 1.6x one stream's (1.1x with the same turns in one
thread), so more streams lowered the total throughput. Here a worker goes from one
component's turn to the next with a function call.

Order: a component woken by its data (or whose timer is due) goes before one that
yielded, so a live sensor's block is not queued behind turns of streams replaying files
at max speed, yet waits no longer than BULK_MAX_WAIT_S behind them; each queue is first
come, first served, so no component starves. At most
`bulk_workers` (default one) turns of components that yielded run at once: they are
all Python work under one GIL, and two workers taking them cost 1.3-1.45x the CPU per
window of one (64 streams replaying at max speed, side by side); the other workers stay
free for live turns (a camera's model call beside a sensor's block).

A turn that blocks (a backend call or a disk that does not return) holds its worker;
`tend()` starts another worker whenever fewer than `workers` are free of a turn older
than STUCK_S, so the other components keep their turns: one more thread for each turn
that is stuck (in a fault only; a cap would let a few hung streams stop every healthy
one). An extra worker ends once the stuck one is back. How long a component has been
waiting or inside its turn is for the supervisor's heartbeats, not for this pool.
"""

from __future__ import annotations

import collections
import enum
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

__all__ = ["BULK_MAX_WAIT_S", "HUNG_BULK_S", "STUCK_S", "YIELD", "TurnHandle", "TurnPool"]

log = logging.getLogger(__name__)

YIELD = -1.0  # a turn's answer: run me again after every component that is ready now
STUCK_S = 1.0  # a worker this long in one turn no longer counts as free (see tend)
# A max-speed turn this long is taken for hung and gives its slot up (the supervisor
# shows its stream hung from its hang limit, at least 5 s too); a slow one keeps it.
HUNG_BULK_S = 5.0
# A component that yielded waits at most this long behind live turns (that are always
# ready when live streams keep every worker busy)
BULK_MAX_WAIT_S = 0.1
IDLE_WAIT_S = 5.0  # an idle worker looks around at least this often (close() wakes it)

Turn = Callable[[], "float | None"]


class _State(enum.Enum):
    PARKED = 0  # waiting for its timer or a wake()
    QUEUED = 1
    RUNNING = 2
    DONE = 3


class TurnHandle:
    """One component in the pool: `wake()` brings its next turn forward (any thread)."""

    __slots__ = ("_pool", "_token", "name", "queued_at", "state", "turn", "woken")

    def __init__(self, pool: TurnPool, name: str, turn: Turn) -> None:
        self._pool = pool
        self.name = name
        self.turn = turn
        self.state = _State.QUEUED
        self.woken = False  # woken while running: its next turn comes at once
        self.queued_at = 0.0  # monotonic: when it yielded (see BULK_MAX_WAIT_S)
        self._token = 0  # bumped at each park: a stale timer does nothing

    def wake(self) -> None:
        self._pool._wake(self)

    @property
    def done(self) -> bool:
        return self.state is _State.DONE


class _Worker:
    __slots__ = ("bulk", "busy_since", "thread")

    def __init__(self) -> None:
        self.busy_since: float | None = None  # monotonic start of its current turn
        self.bulk = False  # its current turn came from the queue of those that yielded
        self.thread: threading.Thread | None = None


class TurnPool:
    def __init__(
        self, workers: int | None = None, name: str = "turns", bulk_workers: int = 1
    ) -> None:
        """`workers`: threads free to take turns (default: one per CPU); `bulk_workers`:
        how many of them may run turns of components that yielded at once."""
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self.bulk_workers = max(1, bulk_workers)
        self.name = name
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._live: collections.deque[TurnHandle] = collections.deque()
        self._bulk: collections.deque[TurnHandle] = collections.deque()
        self._timers: list[tuple[float, int, int, TurnHandle]] = []
        self._seq = itertools.count()
        self._threads: list[_Worker] = []
        self._closed = False
        self._started = False
        self._names = itertools.count(1)
        self.max_running = 0  # the most turns run at once (for tests)
        self.extra_started = 0  # workers started beside stuck ones

    # -- components -----------------------------------------------------------------
    def add(self, name: str, turn: Turn) -> TurnHandle:
        """A component whose first turn is due now."""
        h = TurnHandle(self, name, turn)
        with self._cv:
            self._live.append(h)
            self._cv.notify()
        return h

    def _wake(self, h: TurnHandle) -> None:
        with self._cv:
            if h.state is _State.PARKED:
                h.state = _State.QUEUED
                h._token += 1
                self._live.append(h)
                self._cv.notify()
            elif h.state is _State.RUNNING:
                h.woken = True

    # -- threads ----------------------------------------------------------------------
    def start(self) -> None:
        with self._cv:
            if self._started:
                return
            self._started = True
            for _ in range(self.workers):
                self._spawn_locked()

    def _spawn_locked(self) -> None:
        w = _Worker()
        w.thread = threading.Thread(
            target=self._work, args=(w,), name=f"{self.name}-{next(self._names)}", daemon=True
        )
        self._threads.append(w)
        w.thread.start()

    def tend(self, now: float | None = None) -> int:
        """Start a worker for each one missing from `workers` free ones (a turn older
        than STUCK_S holds its worker); returns how many were started. Cheap: call it
        from a periodic loop (the agent's tick)."""
        t = time.monotonic() if now is None else now
        with self._cv:
            if not self._started or self._closed:
                return 0
            free = self._free_locked(t)
            missing = self.workers - free
            if missing <= 0:
                return 0
            log.warning(
                "%s: %d turn(s) running for over %.0f s; starting %d more worker(s)",
                self.name,
                len(self._threads) - free,
                STUCK_S,
                missing,
            )
            for _ in range(missing):
                self._spawn_locked()
                self.extra_started += 1
            return missing

    def _bulk_free_locked(self, now: float) -> int:
        """Bulk turns that may start now: a stuck one (see tend) does not hold its slot,
        or one hung max-speed stream would stop every other."""
        running = sum(
            1
            for w in self._threads
            if w.bulk and w.busy_since is not None and now - w.busy_since < HUNG_BULK_S
        )
        return self.bulk_workers - running

    def _free_locked(self, now: float) -> int:
        return sum(1 for w in self._threads if w.busy_since is None or now - w.busy_since < STUCK_S)

    def close(self) -> None:
        """No more turns; idle workers end at once, busy ones after their turn."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def join(self, deadline: float) -> bool:
        """Wait (monotonic `deadline`) for the workers; True when all ended."""
        for w in list(self._threads):
            if w.thread is not None:
                w.thread.join(max(0.0, deadline - time.monotonic()))
        return not any(w.thread is not None and w.thread.is_alive() for w in self._threads)

    @property
    def threads(self) -> int:
        return len(self._threads)

    # -- the worker -------------------------------------------------------------------
    def _next_locked(self, w: _Worker) -> TurnHandle | None:
        """The next ready component (None: this worker ends)."""
        while not self._closed:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _due, _seq, token, h = heapq.heappop(self._timers)
                if h.state is _State.PARKED and h._token == token:
                    h.state = _State.QUEUED
                    self._live.append(h)
            bulk = bool(self._bulk) and self._bulk_free_locked(now) > 0
            if bulk and (not self._live or now - self._bulk[0].queued_at > BULK_MAX_WAIT_S):
                w.bulk = True
                return self._bulk.popleft()
            if self._live:
                return self._live.popleft()
            if self._free_locked(now) > self.workers:
                return None  # an extra worker with nothing to do: the stuck one is back
            wait = IDLE_WAIT_S
            if self._timers:
                wait = min(wait, self._timers[0][0] - now)
            self._cv.wait(max(wait, 0.0))
        return None

    def _work(self, w: _Worker) -> None:
        try:
            while True:
                with self._cv:
                    h = self._next_locked(w)
                    if h is None:
                        return
                    h.state = _State.RUNNING
                    h.woken = False
                    w.busy_since = time.monotonic()
                    running = sum(1 for x in self._threads if x.busy_since is not None)
                    self.max_running = max(self.max_running, running)
                try:
                    nxt = h.turn()
                except Exception:  # a turn's bug must not end the worker
                    log.exception("%s: turn of %s failed", self.name, h.name)
                    nxt = None
                with self._cv:
                    w.bulk = False
                    w.busy_since = None
                    self._after_locked(h, nxt)
                    if (
                        len(self._threads) > self.workers
                        and self._free_locked(time.monotonic()) > self.workers
                    ):
                        self._cv.notify()  # what it queued is taken by another
                        return  # more free workers than asked for: this one goes
        finally:
            with self._cv:
                self._threads.remove(w)

    def _after_locked(self, h: TurnHandle, nxt: float | None) -> None:
        if nxt is None:
            h.state = _State.DONE
            return
        parked = False
        if nxt < 0:
            h.state = _State.QUEUED
            h.queued_at = time.monotonic()
            self._bulk.append(h)
        elif nxt == 0 or h.woken:
            h.state = _State.QUEUED
            self._live.append(h)
        else:
            parked = True
            h.state = _State.PARKED
            h._token += 1
            heapq.heappush(self._timers, (time.monotonic() + nxt, next(self._seq), h._token, h))
        # This worker takes the next ready turn itself: another is woken only for the
        # rest, or to watch the new timer while this one is busy. (Waking one for every
        # turn moved a lone max-speed stream between workers at each turn: 10% slower.)
        ready = len(self._live) + min(len(self._bulk), self._bulk_free_locked(time.monotonic()))
        if ready > 1 or (parked and ready > 0):
            self._cv.notify()
