"""Restart pacing, pure: exponential backoff with jitter (the random draw is passed in)
and a restart budget (time passed in). Shared by source reopening and the supervisor."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

__all__ = ["Backoff", "RestartBudget"]


@dataclass
class Backoff:
    """Delay doubles per failed attempt from `min_s` up to `max_s`.

    Jitter spreads each delay over [delay/2, delay] so a fleet that lost the same
    broker does not reconnect in lockstep.
    """

    min_s: float
    max_s: float
    _attempt: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {self.min_s}, {self.max_s}")

    def next_delay(self, draw: float) -> float:
        """The delay before the next attempt; `draw` is uniform in [0, 1)."""
        base = min(self.max_s, self.min_s * (2.0 ** min(self._attempt, 32)))
        self._attempt += 1
        return base * (0.5 + 0.5 * draw)

    def reset(self) -> None:
        self._attempt = 0


@dataclass
class RestartBudget:
    """At most `budget` restarts within `window_s` seconds; `allow(now)` spends one."""

    budget: int = 5
    window_s: float = 60.0

    def __post_init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def allow(self, now: float) -> bool:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        if len(self._times) >= self.budget:
            return False
        self._times.append(now)
        return True
