"""The agent's last log lines in memory, for the remote `logs` and `support-bundle` commands.

A bounded deque of formatted lines (at most `capacity` lines of at most `MAX_LINE_CHARS`
each): a fixed, small memory cost whatever the agent logs.
"""

from __future__ import annotations

import collections
import logging
import threading

from edge_agent.service.logs import PlainFormatter

__all__ = ["DEFAULT_CAPACITY", "MAX_LINE_CHARS", "LogRing", "install"]

DEFAULT_CAPACITY = 1000
MAX_LINE_CHARS = 2000


class LogRing(logging.Handler):
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(PlainFormatter())
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must not fail the caller
            self.handleError(record)
            return
        if len(line) > MAX_LINE_CHARS:
            line = line[: MAX_LINE_CHARS - 3] + "..."
        with self._mutex:
            self._lines.append(line)

    def last(self, n: int, max_bytes: int) -> tuple[list[str], bool]:
        """The last `n` lines, oldest first, cut from the oldest end to `max_bytes` of
        UTF-8; and whether anything was left out for the byte bound."""
        with self._mutex:
            lines = list(self._lines)[-n:] if n > 0 else []
        total, keep = 0, list[str]()
        for line in reversed(lines):
            total += len(line.encode()) + 1
            if total > max_bytes:
                return list(reversed(keep)), True
            keep.append(line)
        return list(reversed(keep)), False


def install(capacity: int = DEFAULT_CAPACITY) -> LogRing:
    """Attach a ring to the root logger (it sees what the configured level lets through)."""
    ring = LogRing(capacity)
    logging.getLogger().addHandler(ring)
    return ring
