"""The one interface every sensor source implements, and the typed block it yields.

A source is pulled by `read(timeout)` from its own thread (see `runner.py`); it
never blocks longer than `timeout`, so the thread can stop promptly. Bad input that
can be skipped is counted in `counters` (reported in status), never silent.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from edge_agent.errors import SourceError

__all__ = ["Block", "Source", "SourceError"]


@dataclass(frozen=True)
class Block:
    """Consecutive samples from one source.

    samples: (n, channels) float32; NaN marks a missing or invalid reading.
    t0: wall-clock (or replayed) timestamp of the first sample, seconds.
    seq: index of the first sample since the source started (monotonic, gaps = lost).
    """

    samples: npt.NDArray[np.float32]
    t0: float
    seq: int
    rate_hz: float

    def __post_init__(self) -> None:
        if self.samples.ndim != 2:
            raise ValueError(f"block samples must be 2-D (n, channels), got {self.samples.shape}")


class Source(ABC):
    """Base class: subclasses set `kind`, define an `Options` dataclass, and implement
    `open`, `read` and `close`."""

    kind: ClassVar[str]
    # Upper bound on the runner's queue for this kind; 1 = only the newest block
    # (cameras: a slow model scores the current frame, never a backlog).
    max_queue_blocks: ClassVar[int | None] = None

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

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counters[what] += n

    def snapshot_counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)
