"""Runs one source in its own thread, feeding a bounded queue.

Overflow policy: when the consumer falls behind a live source, the oldest block is
dropped and counted (`dropped_blocks`), so memory stays bounded and the newest data
wins; the block after a dropped one is marked `gap_before`, as is the first block
after a reopen, so no window spans what was lost. A source that is not live (a file
replayed, or the demo, at max speed: `speed = 0`) is made to wait instead (any other
speed is live: it runs on its own clock and drops like a sensor when its stream falls
behind). A
failing source is reopened with exponential backoff inside a restart budget; past
the budget it is reported `failed` (degraded), never a crash of the agent. A device
that vanished (SourceDisconnectedError: unplugged, re-enumerating, broker down) is
waited for with capped backoff indefinitely and does not spend the budget.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from edge_agent.backoff import Backoff, RestartBudget
from edge_agent.errors import SourceDisconnectedError, SourceError
from edge_agent.sources.base import Block, Source

__all__ = ["RestartBudget", "SourceRunner", "SourceState"]

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.2  # bounds how long stop() waits for the thread
_SAME_TIME_S = 1e-6  # a block starting this close to where the spacing puts it follows on
DEVICE_POLL_MAX_S = 2.0  # longest wait between looks for a vanished device
# A backlog handed over as one block holds at most this many bytes of samples (plus one
# block): bounded windows per hand-over (16,384 samples of 4 channels: ~1,000 windows)
MERGE_MAX_BYTES = 256 * 1024
# Reads of a non-live source per hand-over in its stream's thread: bounds the Python work
# (and the GIL held) per turn when blocks are tiny (64 streams of 1-sample blocks read 4,096
# each per turn without it; the watchdog went 2.3 s without a ping). 256 rather than 64: a
# turn of 16-sample blocks then scores ~250 windows, a backend batch, not ~60, and the
# per-turn work is spread over four times the windows (max speed, 64 streams: block 16
# +10% windows/s, block 1 +27%, 64/1 CPU a window 1.05 -> 1.02; WATCHDOG gap 1.03 s)
PULL_MAX_READS = 256


class SourceState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"


class SourceRunner:
    def __init__(
        self,
        source: Source,
        *,
        max_blocks: int = 256,
        budget: RestartBudget | None = None,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        merge_below: int = 0,
        merge_backlog: bool = True,
    ) -> None:
        """`merge_below`: a queued block shorter than this takes the next one into
        itself when they are contiguous (e.g. the stream's hop: 1-sample blocks from a
        serial sensor are handed over one hop at a time, not one sample at a time);
        0 = never. With it, `get` also hands a backlog of contiguous blocks over as one
        block (up to MERGE_MAX_BYTES): a consumer that fell behind (or a source at max
        speed) pays its per-block costs once per backlog, not once per block; and a
        source that is not live (a file or generator at max speed) is read in the
        consumer's thread, in `get` (see _pull): its thread only opens and reopens it.
        `merge_backlog` False: blocks keep the source's size (beyond merge_below), for a
        consumer whose work depends on it (an adaptive baseline learns between blocks).

        A consumer that does not wait in `get` (a stream run in turns) calls `arm`
        instead, and is called back by the waker it gave `set_waker` once `get` has
        something for it."""
        self.source = source
        self._q: collections.deque[Block] = collections.deque()
        self._queued = 0  # samples in _q
        self._want = 1  # samples the consumer waits for (see get)
        # a latest-frame source keeps its one newest block, never a merged backlog
        self._merge_below = merge_below if source.max_queue_blocks is None else 0
        cap = source.max_queue_blocks
        self._max = min(max_blocks, cap) if cap else max_blocks
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"src-{source.name}", daemon=True)
        self.budget = budget or RestartBudget()
        self._backoff = Backoff(backoff_min_s, backoff_max_s)
        self.state = SourceState.STARTING
        self.last_error = ""
        self.restarts = 0
        self.disconnects = 0  # SourceDisconnectedError while reading (device vanished)
        self.dropped_blocks = 0
        self.samples_in = 0
        self._reopened = False  # the next block follows a reconnect: a hole before it
        # Pull mode (see _pull): the consumer reads while `_pulling`; the thread only
        # opens the source and ends; a read error starts a thread that reopens it.
        self._merge_backlog = merge_backlog
        self._pull_mode = self._merge_below > 0 and not source.live
        self._pulling = False
        self._read_lock = threading.Lock()  # a read in get() vs the thread's close()
        # A pull-mode source that filled its last hand-over runs ahead of its consumer
        # (max speed): the consumer's next turn may wait behind live ones (see ahead).
        self._ahead = False
        self._waker: Callable[[], None] | None = None
        self._armed = False  # the waker is owed a call (see arm)

    def start(self) -> None:
        self._thread.start()

    def set_waker(self, wake: Callable[[], None] | None) -> None:
        """`wake()` is called (from any thread, once per `arm`) when `get` has something
        for an armed consumer."""
        self._waker = wake

    def arm(self, min_samples: int = 1) -> bool:
        """For a consumer that does not wait in `get`: True when `get` has something for
        it now (`min_samples` queued, the source is read in the consumer's turn, or the
        source ended, failed or stops); else False, and the waker is called once when
        that becomes so (or a full queue is about to drop a block)."""
        with self._cv:
            if self._queued >= min_samples or self._pulling or self.done:
                self._armed = False
                return True
            self._want = max(1, min_samples)
            self._armed = True
            return False

    def _signal(self) -> None:
        """With _cv held: something changed for the consumer (data, an end, a stop)."""
        self._cv.notify_all()
        if self._armed:
            self._armed = False
            self._want = 1
            if self._waker is not None:
                self._waker()

    @property
    def pulling(self) -> bool:
        """The source is read in the consumer's `get` (not live, see _pull)."""
        return self._pulling

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._cv:
            self._pulling = False  # (a stopped runner is not alive: a restart replaces it)
            self._signal()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._pull_mode:  # no thread of its own to close it (see _run)
            with self._read_lock:
                self.source.close()
        if self.state not in (SourceState.FINISHED, SourceState.FAILED):
            self.state = SourceState.STOPPED

    def get(
        self, timeout: float, min_samples: int = 1, max_samples: int | None = None
    ) -> list[Block]:
        """All queued blocks (possibly none after `timeout`). Waits (at most `timeout`)
        until `min_samples` samples are queued, e.g. up to the end of the next window:
        tiny blocks are then handed over together, one wake-up instead of one each.
        `max_samples`: a backlog is merged only up to this many samples (a run bounded
        by a number of windows takes no more than it needs in one block)."""
        if self._pulling:
            return self._pull(timeout, max_samples)
        with self._cv:
            if self._queued < min_samples and not self.done and timeout > 0:
                self._want = max(1, min_samples)
                self._cv.wait(timeout)
                self._want = 1
            out = list(self._q)
            self._q.clear()
            self._queued = 0
            self._cv.notify_all()  # a non-live source may be waiting for room
        # (outside the lock: the source thread may queue the next blocks meanwhile)
        if not self._merge_below or not self._merge_backlog or len(out) < 2:
            return out
        return _coalesced(out, MERGE_MAX_BYTES, max_samples)

    def _pull(self, timeout: float, max_samples: int | None) -> list[Block]:
        """Pull mode: read the source here until MERGE_MAX_BYTES (or `max_samples`) are
        in hand or PULL_MAX_READS reads are done, the data ends, or a read fails (then
        the thread recovers it, and the blocks read so far are handed over). A source at
        max speed never waits, so a hand-over to a thread of its own and back was only
        cost: a wake-up per backlog and a GIL hand-off around each of its numpy calls."""
        out: list[Block] = []
        nbytes = n = reads = 0
        small = self._merge_below
        first_wait = 0.0 if self._ahead else timeout  # a source that runs ahead has data
        with self._read_lock:
            while self._pulling and not self._stop.is_set():
                try:
                    # (a source at max speed does not wait; one that might, only at first)
                    blk = self.source.read(0.0 if out else first_wait)
                    reads += 1
                except Exception as e:  # noqa: BLE001 - a thread sorts it out (_recover_pull)
                    with self._cv:
                        self._pulling = False
                    self._thread = threading.Thread(
                        target=self._recover_pull, args=(e,), name=self._thread.name, daemon=True
                    )
                    self._thread.start()  # (it closes the source once this read lock is free)
                    break
                if blk is None:
                    if self.source.finished:
                        self.source.close()
                        with self._cv:
                            self._pulling = False
                            self.state = SourceState.FINISHED
                            self._signal()
                    break
                if self._reopened:
                    self._reopened = False
                    blk = blk.with_gap()
                k = len(blk.samples)
                merged = _merged(out[-1], blk) if out and len(out[-1].samples) < small else None
                if merged is not None:
                    out[-1] = merged  # a tiny block takes the next in, as queued ones do
                else:
                    out.append(blk)
                self.samples_in += k
                nbytes += blk.samples.nbytes
                n += k
                if (
                    nbytes >= MERGE_MAX_BYTES
                    or reads >= PULL_MAX_READS
                    or (max_samples is not None and n >= max_samples)
                ):
                    break
        # a full hand-over: the source runs ahead of its consumer
        self._ahead = self._pulling and (nbytes >= MERGE_MAX_BYTES or reads >= PULL_MAX_READS)
        if not self._merge_backlog or len(out) < 2:
            return out
        return _coalesced(out, MERGE_MAX_BYTES, max_samples)

    @property
    def alive(self) -> bool:
        """The reader thread runs, or the consumer reads the source (pull mode); False
        before start() and once it ended, for any reason."""
        return self._pulling or self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.state in (SourceState.FINISHED, SourceState.FAILED) or self._stop.is_set()

    def _put(self, blk: Block) -> None:
        with self._cv:
            if not self.source.live:
                # Recorded or generated data waits for the consumer instead: dropping it
                # would only lose what can be read at the consumer's own pace.
                while len(self._q) >= self._max and not self._stop.is_set():
                    self._cv.wait(READ_TIMEOUT_S)
                if self._stop.is_set():
                    return  # stopping: nothing will read it, and nothing was lost
            if self._reopened:
                self._reopened = False
                blk = blk.with_gap()
            n = len(blk.samples)
            if self._q and len(self._q[-1].samples) < self._merge_below:
                merged = _merged(self._q[-1], blk)
                if merged is not None:
                    self._q[-1] = merged
                    self._queued += n
                    self.samples_in += n
                    if self._queued >= self._want:
                        self._signal()
                    return
            if len(self._q) >= self._max:
                self._queued -= len(self._q.popleft().samples)
                self.dropped_blocks += 1
                # what follows the dropped block starts after a hole
                if self._q:
                    self._q[0] = self._q[0].with_gap()
                else:
                    blk = blk.with_gap()
            self._q.append(blk)
            self._queued += n
            self.samples_in += n
            if self._queued >= self._want or len(self._q) >= self._max:
                self._signal()

    def _open(self) -> bool:
        self._backoff.reset()
        while not self._stop.is_set():
            try:
                self.source.open()
            except SourceDisconnectedError as e:
                # an unplugged device: wait for it as long as it takes, budget untouched
                self.last_error = str(e)
                if self.state is not SourceState.RECONNECTING:
                    log.warning("source %s: %s; waiting for it", self.source.name, e)
                self.state = SourceState.RECONNECTING
                # a vanished device is looked for at least every DEVICE_POLL_MAX_S: an
                # open() costs nothing, and every second waited past its return is data lost
                delay = min(self._backoff.next_delay(1.0), DEVICE_POLL_MAX_S)  # one device
                self._stop.wait(delay)
                continue
            except SourceError as e:
                self.last_error = str(e)
                log.warning("source %s: open failed: %s", self.source.name, e)
                if not self.budget.allow(time.monotonic()):
                    self._fail(f"restart budget exhausted: {e}")
                    return False
                self.restarts += 1
                self.state = SourceState.RECONNECTING
                self._stop.wait(self._backoff.next_delay(1.0))  # no jitter: one device
                continue
            if self.state is not SourceState.STARTING:
                self._reopened = True  # whatever comes next does not follow on
            self.state = SourceState.RUNNING
            return True
        return False

    def _fail(self, why: str) -> None:
        self.state = SourceState.FAILED
        self.last_error = why
        log.error("source %s failed: %s", self.source.name, why)
        with self._cv:
            self._signal()

    def _run(self) -> None:
        if not self._open():
            return
        if self._pull_mode:
            self._start_pulling()
            return  # no thread while the consumer reads: one per stream cost a wake-up
            # every READ_TIMEOUT_S for nothing (64 streams at max speed: 320 a second)
        while not self._stop.is_set():
            try:
                blk = self.source.read(READ_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - sorted out by _recover
                if not self._recover(e):
                    return
                continue
            if blk is not None:
                self._put(blk)
            elif self.source.finished:
                self.state = SourceState.FINISHED
                with self._cv:
                    self._signal()
                break
        with self._read_lock:  # not while the consumer reads
            self.source.close()

    def _start_pulling(self) -> None:
        with self._cv:
            if not self._stop.is_set():
                self._pulling = True
            self._signal()  # a consumer waiting in get() (or armed) pulls at its next turn

    def _recover_pull(self, e: BaseException) -> None:
        """Pull mode, after a read failed in the consumer: what _run does for a read
        error in its own thread, then the consumer reads again."""
        if self._recover(e):
            self._start_pulling()

    def _recover(self, e: BaseException) -> bool:
        """After a failed read: reopen within the budget (waiting for a vanished device
        without spending it). False when the source failed for good or we stop."""
        if not isinstance(e, SourceError):  # a bug in a source must not kill the agent
            log.error("source %s crashed", self.source.name, exc_info=e)
            with self._read_lock:
                self.source.close()
            self._fail(f"internal error: {e!r}")
            return False
        self.last_error = str(e)
        log.warning("source %s: %s; reopening", self.source.name, e)
        with self._read_lock:
            self.source.close()
        self.state = SourceState.RECONNECTING
        if isinstance(e, SourceDisconnectedError):
            self.disconnects += 1
            return self._open()
        if not self.budget.allow(time.monotonic()):
            self._fail(f"restart budget exhausted: {e}")
            return False
        self.restarts += 1
        return self._open()


def _merged(a: Block, b: Block) -> Block | None:
    """`a` followed by `b` as one block, when nothing lies between them (numbering
    follows on, no hole, same rate and shape); None otherwise. Every sample keeps its
    time: when b does not start where a's spacing puts it (a live source stamps
    receive times), the merged block carries per-sample times."""
    if not _follows(a, b):
        return None
    n = len(a.samples)
    samples = np.concatenate((a.samples, b.samples))
    if a.times is None and b.times is None and abs(b.t0 - a.time_of(n)) <= _SAME_TIME_S:
        return Block(samples, a.t0, a.seq, a.rate_hz, a.gap_before)
    times = np.concatenate((_times(a), _times(b)))
    return Block(samples, a.t0, a.seq, a.rate_hz, a.gap_before, times)


def _coalesced(blocks: list[Block], max_bytes: int, max_samples: int | None) -> list[Block]:
    """`blocks` with each run of contiguous ones (see _merged) as one block of at most
    `max_bytes` and `max_samples` (one block alone may be larger): one concatenation
    per run."""
    out: list[Block] = []
    run: list[Block] = []
    size = n = 0
    for b in blocks:
        k = len(b.samples)
        if run and (
            size + b.samples.nbytes > max_bytes
            or (max_samples is not None and n + k > max_samples)
            or not _follows(run[-1], b)
        ):
            out.append(_joined(run))
            run, size, n = [], 0, 0
        run.append(b)
        size += b.samples.nbytes
        n += k
    if run:
        out.append(_joined(run))
    return out


def _follows(a: Block, b: Block) -> bool:
    """Nothing lies between `a` and `b`: numbering follows on, no hole, same rate and
    shape (their times may still be off the rate's grid: _joined keeps them)."""
    return (
        not b.gap_before
        and b.seq == a.seq + len(a.samples)
        and b.rate_hz == a.rate_hz
        and a.samples.shape[1:] == b.samples.shape[1:]
    )


def _joined(run: list[Block]) -> Block:
    """Contiguous blocks as one; every sample keeps its time (per-sample times when a
    block does not start where the spacing puts it)."""
    a = run[0]
    if len(run) == 1:
        return a
    samples = np.concatenate([b.samples for b in run])
    if all(b.times is None for b in run) and _on_grid(run):
        return Block(samples, a.t0, a.seq, a.rate_hz, a.gap_before)
    times = np.concatenate([_times(b) for b in run])
    return Block(samples, a.t0, a.seq, a.rate_hz, a.gap_before, times)


def _on_grid(run: list[Block]) -> bool:
    """Every block starts where the first block's t0 and rate put it (as _merged asks
    of each merge into the first block)."""
    a, at = run[0], 0
    for b in run:
        if abs(b.t0 - a.time_of(at)) > _SAME_TIME_S:
            return False
        at += len(b.samples)
    return True


def _times(b: Block) -> npt.NDArray[np.float64]:
    if b.times is not None:
        return b.times
    return b.t0 + np.arange(len(b.samples), dtype=np.float64) / (b.rate_hz or 1.0)
