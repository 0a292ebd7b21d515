"""Inference latency as a fixed-bucket histogram: cheap enough to record every batch.

Pure: durations are passed in. The backend records each call under its own lock; the
status snapshot copies the counts, and the metrics endpoint exposes them as a
Prometheus histogram (`edge_agent_inference_seconds`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

__all__ = ["LATENCY_BUCKETS_S", "LatencyHistogram", "LatencySnapshot"]

# Inference on a Pi/Jetson: sub-millisecond (tiny int8 models) to seconds (cameras).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


@dataclass(frozen=True)
class LatencySnapshot:
    """buckets: upper bounds, seconds; counts: calls per bucket (not cumulative), one
    more than the bounds for the calls above the last; sum_s: total seconds."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    sum_s: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_json(self) -> dict[str, object]:
        return {"buckets_s": list(self.buckets), "counts": list(self.counts), "sum_s": self.sum_s}


class LatencyHistogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("buckets must be strictly increasing and not empty")
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self._sum += seconds

    def reset(self) -> None:
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0

    def snapshot(self) -> LatencySnapshot:
        return LatencySnapshot(self.buckets, tuple(self._counts), self._sum)
