"""One inference scheduler per loaded model: windows from every stream, one batched call.

Streams (and the local serving endpoint, later) hand normalised windows to the
scheduler of the model they serve and wait for their scores. One worker thread per
loaded model takes what is queued, most urgent first (real-time streams before
best-effort requests, then earliest deadline, then arrival), runs it as one batch on
the shared backend, and hands each requester its own scores. Threads grow with models,
not streams, and N streams cost one backend call instead of N.

Batching: a batch closes at `max_batch` windows, or when as many requests as the last
batch had are queued (never more than the attached clients), or `max_delay_s` after its
oldest request arrived (a quarter of the profile's per-window latency budget). Streams
at full speed come back together and fill batches; a real-time stream alone is not
waited for; a stream that goes quiet costs at most one wait of `max_delay_s`. A request
larger than `max_batch` (a stream's block after a backlog: one hand-over for all its
windows) is a batch of its own, run in backend calls of at most `max_batch` windows.

Bounded, never silent: a best-effort request is refused at once (OverloadError) when
the queue already holds `max_queue` windows or cannot be served before its deadline
(queued windows x the measured time per window); one whose deadline passes while
queued is refused rather than run late. A real-time request is never refused: each
stream has at most one in flight (it waits for its scores), so they are bounded by
the number of streams.

When no worker runs (not started yet, restarting after a fault, the agent stopping)
a requester scores its own windows in its thread, as before the scheduler existed:
a stream never waits on a worker that is not there. So does the only client of a
model while nothing is queued: there is nothing to batch with. A stream whose turn
holds a quarter of a batch or more (a max-speed turn, its file's last rows before a
loop, a backlog) scores it in its own thread through `try_now` while the worker is idle
(`score` does so): batching it with others gains little, and the hand-over to the
worker and back cost 64 max-speed streams about a sixth of their windows/s when full
batches took it (from a quarter: the file-end turns too, one in 13 at 64 streams).
`try_now` counts what it scores in `windows` and `batches` (`inline_windows` only counts
scoring with no worker running).

Scores are each request's own: scored with its own normalisation (LoadedModel's
model_input / scores_from_output) on its slice of the batch output. In batches of two
windows or more a row's output does not depend on what else is in the batch (every
bundled model but skab-pca), so those scores are bit-identical to scoring them alone in
such a batch; a lone window is run by other kernels (a batch-1 GEMV, the I/O binding)
and may differ in the last bits from the same window batched with others (review 21x).
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.errors import DeadlineError, ModelError, OverloadError
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel

__all__ = [
    "DEFAULT_MAX_BATCH",
    "InferenceScheduler",
    "OverloadError",
    "Priority",
    "Request",
    "SchedulerSet",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 256  # windows per backend call (the demo model: ~1 us a window batched)
# a request of at least this share of max_batch is scored in its requester's thread while
# the worker is idle (see score)
OWN_THREAD_SHARE = 0.25
TAKE_TIMEOUT_S = 0.25  # the worker's heartbeat period when idle
WAIT_SLICE_S = 0.25  # a requester re-checks the worker this often


class Priority(enum.IntEnum):
    REALTIME = 0  # a live stream: served first, never refused
    BEST_EFFORT = 1  # e.g. an endpoint request: refused rather than queued without bound


class _Loop(Protocol):  # what the supervisor hands a component (service.supervisor.Loop)
    stop: threading.Event

    def beat(self) -> None: ...


class _Latch:
    """Set once, waited on by one thread: a bare lock (threading.Event's condition
    costs a Python-level notify per set, measured ~17% of the worker's time)."""

    __slots__ = ("_done", "_lock")

    def __init__(self) -> None:
        self._done = False
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        """Once (later calls do nothing); only the worker's thread sets."""
        if not self._done:
            self._done = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._done

    def wait(self, timeout: float) -> bool:
        if self._lock.acquire(timeout=timeout):
            self._lock.release()  # stays set for any later look
            return True
        return False


@dataclass(eq=False)
class Request:
    model: LoadedModel  # whose normalisation x carries; its backend is the scheduler's
    x: npt.NDArray[np.float32]  # normalised windows (n, window, columns)
    priority: Priority
    deadline: float | None  # monotonic seconds
    seq: int
    arrived: float
    done: _Latch = field(default_factory=_Latch)
    scores: npt.NDArray[np.float64] | None = None
    error: BaseException | None = None
    # Set by a requester that turns outputs into scores itself (see score): x's model
    # input and far mask, prepared in its thread; the worker then hands back `outputs`
    # (the backend's, one array per backend call of at most max_batch windows) instead
    # of scores.
    prepared: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None] | None = None
    outputs: list[npt.NDArray[np.float32]] | None = None

    def order(self) -> tuple[int, float, int]:
        return (int(self.priority), self.deadline or float("inf"), self.seq)

    def finish(self, scores: npt.NDArray[np.float64] | None, error: BaseException | None) -> None:
        self.scores, self.error = scores, error
        self.done.set()


class InferenceScheduler:
    """The queue and batch worker of one loaded model (one backend instance)."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay_s: float = 0.001,
        max_queue: int = 4 * DEFAULT_MAX_BATCH,
        latency_budget_s: float = 0.010,
    ) -> None:
        """`latency_budget_s`: the profile's per-window latency budget, which a real-time
        request's wait in the queue is counted against (`realtime_late`)."""
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_delay_s >= 0")
        self.model = model
        self.backend = model.backend
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self._q: list[Request] = []
        self._queued_windows = 0
        # try_now takes the lock itself: Condition's __enter__/__exit__ are Python calls
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._workers = 0  # worker loops running now
        self._executing = False  # a batch (the worker's, or a try_now) is being scored
        self._closed = False
        self.clients = 0  # attached requesters (streams)
        self._last_requests = 1  # requests in the last batch: how many the next waits for
        # figures for status / metrics
        self.batches = 0
        self.windows = 0
        self.inline_windows = 0  # scored in a requester's thread (no worker running)
        self.refused = 0
        self.expired = 0
        self.max_queued = 0
        # real-time requests the worker took from the queue: how many, how many waited
        # there longer than the budget, the longest wait (an endpoint flood must not
        # hold a live stream's windows back: served first, they wait one batch at most)
        self.latency_budget_s = latency_budget_s
        self.realtime_queued = 0
        self.realtime_late = 0
        self.realtime_max_wait_s = 0.0
        self._s_per_window = 0.0  # moving average, for deadline refusals

    @property
    def name(self) -> str:
        return self.model.card.name

    @property
    def running(self) -> bool:
        return self._workers > 0 and not self._closed

    def attach(self) -> None:
        with self._cv:
            self.clients += 1

    def detach(self) -> None:
        with self._cv:
            self.clients = max(0, self.clients - 1)

    # -- requester side ------------------------------------------------------------
    def submit(
        self,
        model: LoadedModel,
        x: npt.NDArray[np.float32],
        *,
        priority: Priority = Priority.REALTIME,
        deadline: float | None = None,
        prepared: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None] | None = None,
    ) -> Request:
        """Queue normalised windows `x` (n, ...) of `model` (which must share this
        scheduler's backend). Raises OverloadError for a best-effort request that cannot
        be served in time; ModelError for another model's windows. `prepared`: x's
        model_input, made by the caller, who then takes `outputs`, not `scores`."""
        if model.backend is not self.backend:
            raise ModelError(f"{model.card.name}: not the model of scheduler {self.name}")
        now = time.monotonic()
        with self._cv:
            if priority is not Priority.REALTIME:
                self._admit(len(x), deadline, now)
            r = Request(model, x, priority, deadline, next(self._seq), now, prepared=prepared)
            self._q.append(r)
            self._queued_windows += len(x)
            self.max_queued = max(self.max_queued, self._queued_windows)
            self._cv.notify_all()
        return r

    def _admit(self, n: int, deadline: float | None, now: float) -> None:
        if self._queued_windows + n > self.max_queue:
            self.refused += 1
            raise OverloadError(
                f"model {self.name}: {self._queued_windows} windows queued (limit "
                f"{self.max_queue}); try again shortly"
            )
        if deadline is not None:
            wait = (self._queued_windows + n) * self._s_per_window
            if now + wait > deadline:
                self.refused += 1
                raise DeadlineError(
                    f"model {self.name}: cannot score within the deadline (about "
                    f"{wait * 1e3:.1f} ms of work queued)"
                )

    def try_now(
        self, model: LoadedModel, x: npt.NDArray[np.float32], *, deadline: float | None
    ) -> npt.NDArray[np.float64] | None:
        """A best-effort request scored at once in the caller's thread when the worker
        is idle and nothing is queued (it would be the worker's next batch alone, so the
        order is the same), else None (submit it). A request queued meanwhile waits for
        this one as it would for the worker's batch. Saves the two thread switches of a
        hand-over, most of a lone request's time. Raises OverloadError (deadline),
        ModelError."""
        if model.backend is not self.backend:
            raise ModelError(f"{model.card.name}: not the model of scheduler {self.name}")
        with self._lock:
            if self._q or self._executing or self._workers <= 0 or self._closed:
                return None
            self._admit(len(x), deadline, time.monotonic())
            self._executing = True
        t0 = time.perf_counter()
        try:
            scores = self._scores(model, x)
            self._account(len(x), time.perf_counter() - t0)
            return scores
        finally:
            # Cleared without the lock, as the worker clears its own: a request queued
            # before this point is seen below and its waiting worker woken; one queued
            # after it finds the flag clear. An idle worker sleeps on.
            self._executing = False
            if self._q:
                with self._cv:
                    self._cv.notify_all()

    def score(
        self,
        model: LoadedModel,
        x: npt.NDArray[np.float32],
        *,
        priority: Priority = Priority.REALTIME,
        deadline: float | None = None,
    ) -> npt.NDArray[np.float64]:
        """Scores of `x` (one per window), through the worker when one runs, else in the
        calling thread. A quarter of a batch or more of its own (a turn at max speed,
        its file's last rows before a loop, a backlog) is scored in the calling thread
        while the worker is idle: batching it with other clients gains little (the demo
        model: 0.66-0.81 us a window from 64 to 256 windows a call, 18 at 1), and the
        hand-over to the worker and back cost 64 max-speed streams a sixth of their
        windows/s when full batches took it (side by side: 1.18x without it). Raises
        what scoring raised (ModelError), or OverloadError."""
        if len(x) >= OWN_THREAD_SHARE * self.max_batch and self.clients > 1 and self.running:
            return self._full_batches(model, x, priority, deadline)
        return self._one_request(model, x, priority, deadline)

    def _full_batches(
        self,
        model: LoadedModel,
        x: npt.NDArray[np.float32],
        priority: Priority,
        deadline: float | None,
    ) -> npt.NDArray[np.float64]:
        """`x` in parts of whole backend batches within one request's limit (max_queue),
        each through `try_now`, or the worker when it is busy: the same backend calls as
        the worker would make, so the same scores."""
        mb = self.max_batch
        step = max(mb, self.max_queue // mb * mb)
        parts = []
        for i in range(0, len(x), step):
            xp = x[i : i + step]
            try:
                s = self.try_now(model, xp, deadline=deadline)
            except OverloadError:  # (not for a request within max_queue: a safety net)
                s = None
            parts.append(s if s is not None else self._one_request(model, xp, priority, deadline))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _one_request(
        self,
        model: LoadedModel,
        x: npt.NDArray[np.float32],
        priority: Priority,
        deadline: float | None,
    ) -> npt.NDArray[np.float64]:
        if not self.running or (self.clients <= 1 and not self._q):
            # no worker, or nobody to batch with: a hand-over to the worker and back
            # would only add two thread switches
            return self._inline(model, x)
        # The worker runs only the backend: this thread prepares the model input and
        # turns the outputs into scores, on data in its own core's cache, and beside the
        # worker instead of on it (with 64 streams at max speed the worker, doing all of
        # it, was the bottleneck at 1.4 us a window).
        prepared = model.model_input(x)
        r = self.submit(model, x, priority=priority, deadline=deadline, prepared=prepared)
        while not r.done.wait(WAIT_SLICE_S):
            if not self.running and self._withdraw(r):
                return self._inline(model, x)
        if r.error is not None:
            raise r.error
        assert r.outputs is not None
        return self._from_outputs(model, prepared, r.outputs)

    def _from_outputs(
        self,
        model: LoadedModel,
        prepared: tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None],
        outputs: list[npt.NDArray[np.float32]],
    ) -> npt.NDArray[np.float64]:
        """Scores from the worker's outputs, part by part as _scores makes them (so they
        are the same numbers)."""
        xin, far = prepared
        if len(outputs) == 1:
            return model.scores_from_output(xin, outputs[0], far)
        mb, parts = self.max_batch, []
        for i, y in zip(range(0, len(xin), mb), outputs, strict=True):
            fp = None if far is None else far[i : i + mb]
            parts.append(model.scores_from_output(xin[i : i + mb], y, fp))
        return np.concatenate(parts)

    def _inline(self, model: LoadedModel, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        self.inline_windows += len(x)
        return self._scores(model, x)

    def _scores(self, model: LoadedModel, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Scores of one requester's windows, in backend calls of at most max_batch
        windows (a request may be larger: a stream's whole block), each part scored
        while its output is fresh in cache (no copy of the whole output)."""
        xin, far = model.model_input(x)
        mb = self.max_batch
        if len(xin) <= mb:
            return model.scores_from_output(xin, self.backend.infer(xin), far)
        parts = []
        for i in range(0, len(xin), mb):
            xp = xin[i : i + mb]
            fp = None if far is None else far[i : i + mb]
            parts.append(model.scores_from_output(xp, self.backend.infer(xp), fp))
        return np.concatenate(parts)

    def _withdraw(self, r: Request) -> bool:
        """Take `r` back from the queue (True) unless a worker already took it."""
        with self._cv:
            if r in self._q:
                self._q.remove(r)
                self._queued_windows -= len(r.x)
                return True
            return False

    # -- worker side ------------------------------------------------------------------
    def run(self, loop: _Loop) -> None:
        """The worker: a supervised body (beats at least every TAKE_TIMEOUT_S). Returns
        when the agent stops or the scheduler is closed (its model was evicted)."""
        with self._cv:
            self._workers += 1
        try:
            while not loop.stop.is_set() and not self._closed:
                loop.beat()
                with self._cv:  # re-entrant: taken and marked at once, no try_now between
                    batch = self.next_batch(TAKE_TIMEOUT_S)
                    if batch:  # (an empty one may be a try_now's turn: its flag stays)
                        self._executing = True
                if batch:
                    try:
                        self._execute(batch)
                    finally:
                        self._executing = False  # a bool: no lock needed to clear it
        finally:
            with self._cv:
                self._workers -= 1
                self._cv.notify_all()

    def close(self) -> None:
        """No more batches (queued requests are scored by their requesters)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def next_batch(self, timeout: float) -> list[Request]:
        """The next batch (empty after `timeout` idle; later while a try_now scores)."""
        with self._cv:
            if not self._q:
                self._cv.wait(timeout)
                if not self._q:
                    return []
            if self._executing and (
                not self._cv.wait_for(lambda: not self._executing or self._closed, timeout)
                or not self._q
            ):
                return []  # a try_now still scoring (or it took all): the loop comes back
            close_at = min(r.arrived for r in self._q) + self.max_delay_s
            # as many requests as the last batch had (capped by the clients attached):
            # streams running at full speed come back together; one that went quiet
            # costs at most one wait of max_delay_s, then is no longer waited for
            expect = min(self._last_requests, self.clients) if self.clients else 1
            while (
                self._queued_windows < self.max_batch and len(self._q) < expect and not self._closed
            ):
                left = close_at - time.monotonic()
                if left <= 0 or not self._cv.wait(left):
                    break
            self._q.sort(key=Request.order)
            now = time.monotonic()
            batch: list[Request] = []
            n = 0
            keep: list[Request] = []
            for r in self._q:
                if r.deadline is not None and r.deadline < now:
                    self.expired += 1
                    r.finish(None, DeadlineError(f"model {self.name}: deadline passed in queue"))
                elif not batch or n + len(r.x) <= self.max_batch:
                    batch.append(r)
                    n += len(r.x)
                    if r.priority is Priority.REALTIME:
                        self._count_realtime(now - r.arrived)
                else:
                    keep.append(r)
            self._q = keep
            self._queued_windows = sum(len(r.x) for r in keep)
            if batch:
                self._last_requests = len(batch)
            return batch

    def _execute(self, batch: list[Request]) -> None:
        t0 = time.perf_counter()
        try:
            if len(batch) == 1 and batch[0].prepared is None:  # e.g. a block > max_batch
                r = batch[0]
                n = len(r.x)
                r.finish(self._scores(r.model, r.x), None)
            elif len(batch) == 1:  # its requester scores the outputs
                r = batch[0]
                assert r.prepared is not None
                xin, mb = r.prepared[0], self.max_batch
                n = len(xin)
                r.outputs = [self.backend.infer(xin[i : i + mb]) for i in range(0, n, mb)]
                r.finish(None, None)
            else:  # several requests, max_batch windows at most: one backend call
                inputs = [r.prepared or r.model.model_input(r.x) for r in batch]
                big = np.concatenate([x for x, _far in inputs])
                n = len(big)
                y = self.backend.infer(big)
                at = 0
                for r, (x, far) in zip(batch, inputs, strict=True):
                    out = y[at : at + len(x)]
                    if r.prepared is not None:
                        r.outputs = [out]
                        r.finish(None, None)
                    else:
                        r.finish(r.model.scores_from_output(x, out, far), None)
                    at += len(x)
        except ModelError as e:  # the requesters' error (a stream restarts), not ours
            for r in batch:
                if not r.done.is_set():
                    r.finish(None, e)
            return
        except BaseException as e:
            for r in batch:
                if not r.done.is_set():
                    r.finish(None, e)
            raise
        self._account(n, time.perf_counter() - t0)

    def _count_realtime(self, waited_s: float) -> None:
        self.realtime_queued += 1
        self.realtime_late += int(waited_s > self.latency_budget_s)
        self.realtime_max_wait_s = max(self.realtime_max_wait_s, waited_s)

    def _account(self, n: int, dt: float) -> None:
        self.batches += 1
        self.windows += n
        per = dt / n
        self._s_per_window = per if not self._s_per_window else 0.9 * self._s_per_window + 0.1 * per

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "running": self.running,
            "clients": self.clients,
            "batches": self.batches,
            "windows": self.windows,
            "mean_batch": round(self.windows / self.batches, 2) if self.batches else None,
            "inline_windows": self.inline_windows,
            "refused": self.refused,
            "expired": self.expired,
            "max_queued_windows": self.max_queued,
            "latency_budget_ms": round(self.latency_budget_s * 1e3, 3),
            "realtime_queued": self.realtime_queued,
            "realtime_late": self.realtime_late,
            "realtime_max_wait_ms": round(self.realtime_max_wait_s * 1e3, 3),
        }


class SchedulerSet:
    """The schedulers of the loaded models, found by a model's backend. `on_new` is told
    of each new one (the agent registers its worker with the supervisor)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._by_backend: dict[int, InferenceScheduler] = {}
        self._lock = threading.Lock()
        self._count = itertools.count(1)
        # told of each new scheduler (name, scheduler): the agent supervises its worker
        self.on_new: Callable[[str, InferenceScheduler], None] | None = None

    def max_delay_s(self) -> float:
        """A quarter of the profile's per-window latency budget, at most waited to fill
        a batch."""
        return self.profile.window_latency_ms / 1000.0 / 4.0

    def add(self, model: LoadedModel) -> InferenceScheduler:
        with self._lock:
            s = self._by_backend.get(id(model.backend))
            if s is not None:
                return s
            s = InferenceScheduler(
                model,
                max_delay_s=self.max_delay_s(),
                latency_budget_s=self.profile.window_latency_ms / 1000.0,
            )
            self._by_backend[id(model.backend)] = s
            name = f"scheduler-{model.card.name}-{next(self._count)}"
        if self.on_new is not None:
            self.on_new(name, s)
        return s

    def remove(self, model: LoadedModel) -> None:
        with self._lock:
            s = self._by_backend.pop(id(model.backend), None)
        if s is not None:
            s.close()

    def for_model(self, model: LoadedModel) -> InferenceScheduler | None:
        return self._by_backend.get(id(model.backend))

    def all(self) -> list[InferenceScheduler]:
        with self._lock:
            return list(self._by_backend.values())

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.snapshot() for s in self.all()]
