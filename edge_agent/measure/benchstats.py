"""Pure statistics for the benchmarks: percentiles, latency summaries, goal ratios.

Shared by `edge-agent bench` and scripts/bench_peers.py so both quote figures the
same way: percentiles by linear interpolation (numpy's default), ratios computed from
figures measured within the same run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

__all__ = ["Goal", "LatencySummary", "percentile", "speedup"]


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not xs:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside [0, 100]")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass(frozen=True)
class LatencySummary:
    n: int
    p50: float
    p99: float
    mean: float
    max: float

    @staticmethod
    def of(xs: list[float]) -> LatencySummary:
        return LatencySummary(
            len(xs), percentile(xs, 50), percentile(xs, 99), statistics.fmean(xs), max(xs)
        )


def speedup(ours: float, theirs: float, *, lower_is_better: bool) -> float:
    """How many times better `ours` is than `theirs` (> 1: ours is better).

    Latencies: theirs / ours. Throughputs: ours / theirs."""
    if ours <= 0 or theirs <= 0:
        raise ValueError(f"speedup needs positive figures, got {ours} and {theirs}")
    return theirs / ours if lower_is_better else ours / theirs


@dataclass(frozen=True)
class Goal:
    """A goal stated as "at least `target`x better" or "at most `target`" (absolute)."""

    name: str
    measured: float
    target: float
    at_least: bool  # True: measured >= target; False: measured < target

    @property
    def met(self) -> bool:
        return self.measured >= self.target if self.at_least else self.measured < self.target
