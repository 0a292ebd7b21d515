"""Measured sample rate over a sliding time window. Pure: arrival times are passed in."""

from __future__ import annotations

import collections

__all__ = ["RateMeter"]


class RateMeter:
    """Samples per second between the oldest and newest arrival inside `window_s`.

    A real sensor's clock drifts, or it was flashed with a different rate than the
    config says; comparing this with the configured rate makes that visible.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._arrivals: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def add(self, now: float, n: int) -> None:
        self._total += n
        self._arrivals.append((now, self._total))
        # keep one arrival at or before the window start as the baseline
        while len(self._arrivals) > 2 and now - self._arrivals[1][0] >= self.window_s:
            self._arrivals.popleft()

    def reset(self) -> None:
        """Forget history (after a reconnect the gap is not the sensor's rate)."""
        self._arrivals.clear()
        self._total = 0

    @property
    def span_s(self) -> float:
        """Seconds between the oldest and newest arrival kept (how much was measured)."""
        if len(self._arrivals) < 2:
            return 0.0
        return self._arrivals[-1][0] - self._arrivals[0][0]

    @property
    def rate_hz(self) -> float:
        """0.0 until two arrivals span a measurable interval."""
        if len(self._arrivals) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._arrivals[0], self._arrivals[-1]
        if t1 <= t0:
            return 0.0
        return (c1 - c0) / (t1 - t0)
