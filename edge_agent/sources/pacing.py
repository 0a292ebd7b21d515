"""Real-time pacing for generated and replayed data: wait (bounded) until a block is due."""

from __future__ import annotations

import time

__all__ = ["Pacer"]


class Pacer:
    """speed 1.0 = real time, 10 = ten times faster, 0 = as fast as the consumer takes it."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._start: float | None = None

    def wait(self, signal_offset_s: float, timeout: float) -> bool:
        """True when the data at `signal_offset_s` is due; sleeps at most `timeout`."""
        if self.speed <= 0:
            return True
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + signal_offset_s / self.speed
        if due <= now:
            return True
        delay = due - now
        if delay > timeout:
            time.sleep(timeout)
            return False
        time.sleep(delay)
        return True
