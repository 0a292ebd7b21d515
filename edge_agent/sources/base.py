"""The one interface every sensor source implements, and the typed block it yields.

A source is pulled by `read(timeout)` from its own thread (see `runner.py`); it
never blocks longer than `timeout`, so the thread can stop promptly. Bad input that
can be skipped is counted in `counters` (reported in status), never silent.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edge_agent.errors import SourceError
from edge_agent.sources.clock import CLOCK, ClockWatch

__all__ = ["Block", "Source", "SourceError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    """Consecutive samples from one source: no hole inside a block.

    samples: (n, channels) float32; NaN marks a missing or invalid reading.
    t0: source time of the first sample, seconds since the epoch (a timestamp column,
        a frame's time, or the receive time for live sources).
    seq: index of the first sample since the source started (monotonic, gaps = lost).
    rate_hz: sample rate that spaces the samples when `times` is None.
    gap_before: the source knows of a hole right before this block (reconnect, lost or
        damaged frames, skipped lines, blocks dropped by a full queue, a time jump):
        windowing restarts here, so no window spans the hole.
    times: (n,) float64 per-sample source times (seconds), when the source has them;
        None: sample i is at t0 + i / rate_hz.
    """

    samples: npt.NDArray[np.float32]
    t0: float
    seq: int
    rate_hz: float
    gap_before: bool = False
    times: npt.NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        if self.samples.ndim != 2:
            raise ValueError(f"block samples must be 2-D (n, channels), got {self.samples.shape}")
        if self.times is not None and len(self.times) != len(self.samples):
            raise ValueError(f"block times: {len(self.times)} for {len(self.samples)} samples")

    def time_of(self, i: int) -> float:
        """Source time of sample `i` of this block, seconds."""
        if self.times is not None and len(self.times):
            return float(self.times[min(max(i, 0), len(self.times) - 1)])
        return self.t0 + i / (self.rate_hz or 1.0)

    def tail(self, k: int) -> Block:
        """The samples from `k` on, as a block of their own (times and seq kept)."""
        if k <= 0:
            return self
        times = self.times[k:] if self.times is not None else None
        return Block(self.samples[k:], self.time_of(k), self.seq + k, self.rate_hz, False, times)

    def with_gap(self) -> Block:
        """This block marked as following a hole."""
        return self if self.gap_before else dataclasses.replace(self, gap_before=True)


class Source(ABC):
    """Base class: subclasses set `kind`, define an `Options` dataclass, and implement
    `open`, `read` and `close`."""

    kind: ClassVar[str]
    # Upper bound on the runner's queue for this kind; 1 = only the newest block
    # (cameras: a slow model scores the current frame, never a backlog).
    max_queue_blocks: ClassVar[int | None] = None
    # whether the system clock is synchronised (a test may give its own watch)
    clock: ClockWatch = CLOCK

    @property
    def live(self) -> bool:
        """True when data arrives on its own clock (a sensor): a full queue drops the
        oldest block. False when the source can wait (a file or generator running
        faster than real time): a full queue blocks it instead."""
        return getattr(self.options, "speed", 1.0) != 0

    def __init__(self, name: str, options: Any) -> None:
        self.name = name
        self.options = options
        self.counters: Counter[str] = Counter()
        self.finished = False  # set when a finite source (a replayed file) has no more data
        self._lock = threading.Lock()

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names, in sample column order (default: the options' `channels`)."""
        return tuple(self.options.channels)

    @property
    def columns(self) -> int:
        """Values per sample: one per channel, except where a channel is a whole frame
        (a camera's channel is height*width pixels)."""
        return len(self.channels)

    @property
    def rate_hz(self) -> float:
        """Nominal sample rate (default: the options' `rate_hz`)."""
        return float(self.options.rate_hz)

    @property
    def nominal_rate_hz(self) -> float | None:
        """The rate the sensor itself should deliver, for the sensor-health rate check;
        None: not known, or not checked (a replay at another speed than real time)."""
        return self.rate_hz if getattr(self.options, "speed", 1.0) == 1.0 else None

    @abstractmethod
    def open(self) -> None:
        """Acquire the device or file. Raises SourceError with a specific message."""

    @abstractmethod
    def read(self, timeout: float) -> Block | None:
        """Next block, or None if nothing arrived within `timeout` seconds."""

    def close(self) -> None:  # noqa: B027 - most sources have nothing to release
        """Release the device or file. Idempotent."""

    def note_clock(self, n: int) -> None:
        """`n` readings were stamped by this gateway's clock: flag them (counted as
        `unsynced_clock_samples`, warned once) while that clock is not synchronised."""
        if self.clock.synchronized() is not False:
            return
        if not self.counters.get("unsynced_clock_samples"):
            log.warning(
                "source %s: the system clock is not synchronised (NTP): sample times may "
                "be wrong; readings are counted as unsynced_clock_samples",
                self.name,
            )
        self.count("unsynced_clock_samples", n)

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counters[what] += n

    def snapshot_counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)
