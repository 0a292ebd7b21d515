"""Adaptive baseline: the normalisation (per-channel mean/std) follows slow changes of the
process and settles after a level shift, within stated bounds. Pure: blocks in, changes
out (no clock, no files).

Rules, per block of raw samples (rows with NaN are left out):
- **Following** (alarm closed and no window above threshold): mean and variance move
  towards the block's as an exponential average with time constant `follow_s`, so the
  rate of change is bounded: after `follow_s` seconds of a new level, 63 % of the way.
  The std never goes below FLOOR_RATIO x the anchor's (a quiet spell must not make
  every later wobble an alarm).
- **Frozen** while an alarm is open or a window is above the threshold: an ongoing
  anomaly is never averaged into the baseline.
- **Settling** after a level shift: when an alarm has been open for `settle_s` and the
  last `settle_s` of data look like normal operation at another level (each channel's
  std at most STEADY_STD_RATIO x the baseline's, and no trend: the least-squares
  slope over that span changes the level by at most STEADY_TREND x std), the mean
  jumps to that level (a "relearn"); the
  alarm then closes by the policy's own rule. A fault that holds a new steady level
  longer than `settle_s` is, by this rule, taken as a new set point: choose `settle_s`
  longer than the faults you must keep alarming on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

__all__ = [
    "FLOOR_RATIO",
    "STEADY_STD_RATIO",
    "STEADY_TREND",
    "AdaptiveBaseline",
    "BaselineChange",
    "ChangeKind",
]

F64 = npt.NDArray[np.float64]
FLOOR_RATIO = 0.5
STEADY_STD_RATIO = 2.0
STEADY_TREND = 1.0


class ChangeKind(str, Enum):
    FOLLOW = "follow"  # a slow step of the exponential average
    RELEARN = "relearn"  # the mean moved to a settled new level


@dataclass(frozen=True)
class BaselineChange:
    kind: ChangeKind
    mean: F64
    std: F64


@dataclass
class _Chunk:
    n: int
    total: F64
    sq: F64


class AdaptiveBaseline:
    """Tracks mean/std per channel from `anchor_mean`/`anchor_std` (the calibration's or
    the card's). `rate_hz` converts the time constants to samples."""

    def __init__(
        self,
        anchor_mean: npt.ArrayLike,
        anchor_std: npt.ArrayLike,
        *,
        rate_hz: float,
        follow_s: float,
        settle_s: float,
        mean: npt.ArrayLike | None = None,
        std: npt.ArrayLike | None = None,
    ) -> None:
        if rate_hz <= 0 or follow_s <= 0 or settle_s <= 0:
            raise ValueError("rate_hz, follow_s and settle_s must be positive")
        self.anchor_mean = np.asarray(anchor_mean, np.float64)
        self.anchor_std = np.asarray(anchor_std, np.float64)
        self.mean = np.array(self.anchor_mean if mean is None else mean, np.float64)
        std0 = self.anchor_std if std is None else np.asarray(std, np.float64)
        self.var = np.square(np.maximum(std0, FLOOR_RATIO * self.anchor_std))
        self.follow_n = follow_s * rate_hz
        self.settle_n = max(1, int(settle_s * rate_hz))
        self.open_n = 0  # samples since the alarm opened
        self.relearns = 0
        self._recent: deque[_Chunk] = deque()
        self._recent_n = 0

    @property
    def std(self) -> F64:
        out: F64 = np.sqrt(self.var)
        return out

    def update(
        self, x: npt.NDArray[np.floating], *, quiet: bool, alarm_open: bool
    ) -> BaselineChange | None:
        """One block (n, C) of raw samples. `quiet`: no window of it was at or above the
        threshold and no alarm is open. Returns what changed, or None."""
        rows = np.asarray(x, np.float64)
        rows = rows[np.all(np.isfinite(rows), axis=1)]
        n = len(rows)
        if n == 0:
            return None
        self._remember(n, rows.sum(0), np.square(rows).sum(0))
        if not alarm_open:
            self.open_n = 0
            if not quiet:
                return None
            a = min(1.0, n / self.follow_n)
            bm = rows.mean(0)
            bv = np.square(rows - self.mean).mean(0)
            self.mean += a * (bm - self.mean)
            self.var += a * (bv - self.var)
            self.var = np.maximum(self.var, np.square(FLOOR_RATIO * self.anchor_std))
            return BaselineChange(ChangeKind.FOLLOW, self.mean.copy(), self.std)
        self.open_n += n
        if self.open_n < self.settle_n or self._recent_n < self.settle_n:
            return None
        level = self._steady_level()
        if level is None:
            return None
        self.mean = level
        self.relearns += 1
        self.open_n = 0
        self._recent.clear()
        self._recent_n = 0
        return BaselineChange(ChangeKind.RELEARN, self.mean.copy(), self.std)

    def _remember(self, n: int, total: F64, sq: F64) -> None:
        self._recent.append(_Chunk(n, total, sq))
        self._recent_n += n
        while self._recent and self._recent_n - self._recent[0].n >= self.settle_n:
            self._recent_n -= self._recent.popleft().n

    def _steady_level(self) -> F64 | None:
        """The recent data's mean if it looks like normal operation at one level."""
        chunks = list(self._recent)
        n = sum(c.n for c in chunks)
        total = np.sum([c.total for c in chunks], axis=0)
        sq = np.sum([c.sq for c in chunks], axis=0)
        m = total / n
        var = np.maximum(sq / n - m * m, 0.0)
        std = self.std
        if np.any(np.sqrt(var) > STEADY_STD_RATIO * std):
            return None
        level: F64 = m
        if len(chunks) < 3:
            return level  # too few blocks to see a trend in; the std check stands
        # a trend: least-squares slope of the block means over time, as the change it
        # makes across the whole span
        counts = np.array([c.n for c in chunks], np.float64)
        centres = np.cumsum(counts) - counts / 2
        means = np.array([c.total / c.n for c in chunks])
        tc = centres - np.average(centres, weights=counts)
        slope = (counts * tc) @ (means - m) / float(counts @ (tc * tc))
        if np.any(np.abs(slope * n) > STEADY_TREND * std):
            return None
        return level
