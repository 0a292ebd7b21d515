"""Turn OPC UA data-change notifications into evenly spaced samples. Pure: times are
passed in.

A subscription reports a node only when its value changes, each value stamped with
the time the device took it (the source timestamp). A model needs one sample of every
channel at a fixed rate, so this resamples "as of" a grid in source time: the sample
at grid time t holds, for each channel, the newest value stamped at or before t (NaN
before the first). A value that does not change is held, so a steady signal still
yields samples; a value stamped after t never leaks into the sample at t.

The grid runs on the server's clock. The agent reads it through `offset`: the largest
(source time - arrival time) among recent notifications, i.e. the server clock as seen
with the least network delay. Rows are emitted only up to `now + offset - lag`, so
notifications still on their way (a publishing interval) land in the right rows.
"""

from __future__ import annotations

import bisect
import collections
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["AsOfGrid", "GridRows"]

OFFSET_SAMPLES = 64  # notifications the clock offset is taken over
START_WAIT_S = 2.0  # at most this long for the first values before the grid starts


@dataclass(frozen=True)
class GridRows:
    """rows: (n, channels) float32; t0: source time of the first row (seconds since
    the epoch); gap_before: grid slots were skipped before these rows (a time jump)."""

    rows: npt.NDArray[np.float32]
    t0: float
    gap_before: bool


class AsOfGrid:
    """Channels resampled on a grid of `period_s` in source time.

    max_rows: bound on the rows one `emit` returns; slots further behind than that
    (a server clock that jumped, a reader that stalled) are skipped and reported as
    a gap instead of flooding the pipeline.
    """

    def __init__(self, channels: int, period_s: float, *, max_rows: int = 1000) -> None:
        if channels <= 0 or period_s <= 0 or max_rows <= 0:
            raise ValueError("channels, period_s and max_rows must be positive")
        self.period_s = period_s
        self.max_rows = max_rows
        self._held = np.full(channels, np.nan, dtype=np.float32)
        # pending updates, kept sorted by source time: (ts, seq, channel, value)
        self._pending: list[tuple[float, int, int, float]] = []
        self._n = 0
        self._offsets: collections.deque[float] = collections.deque(maxlen=OFFSET_SAMPLES)
        self._next: float | None = None  # source time of the next row

    @property
    def offset(self) -> float:
        """Estimated server clock minus agent clock, seconds (0.0 before any update)."""
        return max(self._offsets) if self._offsets else 0.0

    def add(self, channel: int, value: float, ts: float, arrived: float) -> None:
        """A new value of `channel`, stamped `ts` by the source, received at `arrived`
        (agent wall clock). NaN marks a bad value (bad status, node gone)."""
        self._offsets.append(ts - arrived)
        self._n += 1
        bisect.insort(self._pending, (ts, self._n, channel, value))

    def emit(self, now: float, lag: float) -> GridRows | None:
        """The rows whose grid time has passed `now + offset - lag` (agent clock `now`)."""
        upto = now + self.offset - lag
        if self._next is None:
            # start on the grid at the current time: older values are only held. If the
            # first values are stamped a little later (a subscription's initial values
            # still arriving), start at them, so the first row is not a row of NaN.
            start = math.floor(upto / self.period_s) * self.period_s
            if self._pending:
                newest = math.ceil(self._pending[-1][0] / self.period_s) * self.period_s
                if start < newest <= upto + START_WAIT_S:
                    start = newest
            self._next = start
        due = math.floor((upto - self._next) / self.period_s) + 1
        if due <= 0:
            return None
        gap = False
        if due > self.max_rows:
            skip = due - self.max_rows
            self._next += skip * self.period_s
            due = self.max_rows
            gap = True
        t0 = self._next
        rows = np.empty((due, len(self._held)), dtype=np.float32)
        p = self._pending
        k = 0
        for r in range(due):
            t = t0 + r * self.period_s
            while k < len(p) and p[k][0] <= t:
                self._held[p[k][2]] = p[k][3]
                k += 1
            rows[r] = self._held
        del p[:k]
        self._next = t0 + due * self.period_s
        return GridRows(rows, t0, gap)
