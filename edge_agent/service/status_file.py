"""Writing status.json without letting a hung state disk stop the main loop.

The agent's 1 Hz tick writes `<state_dir>/status.json`; on a disk that hangs (a frozen
filesystem, a dying SD card: no error, the write just blocks) a write on the main thread
would stop WATCHDOG pings and SIGTERM handling with it (review of issue 15). Writes go
through one writer thread instead: `write()` hands the snapshot over and waits for it
briefly (so in the normal case the file is written when `write()` returns, as before),
but never while an earlier write is still stuck: then the newest snapshot replaces the
one waiting (only the newest matters) and `write()` returns at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write_bytes, lined_json

__all__ = ["WRITE_WAIT_S", "StatusFile"]

# How long write() waits for its snapshot to reach the file while the writer is free.
WRITE_WAIT_S = 1.0


class StatusFile:
    """status.json written by its own thread. `on_result(error)` is called by the writer
    after each attempt: None when written, the OSError (or, for a snapshot JSON cannot
    hold, the ValueError/TypeError) when not."""

    def __init__(self, path: Path, on_result: Callable[[Exception | None], None]) -> None:
        self.path = path
        self._on_result = on_result
        self._cv = threading.Condition()
        self._pending: tuple[dict[str, Any], bool] | None = None
        self._busy = False  # the writer is inside a write
        self._done = 0  # writes finished (written or failed)
        self._queued = 0
        self._thread: threading.Thread | None = None

    def write(self, snap: dict[str, Any], *, durable: bool, wait_s: float = WRITE_WAIT_S) -> bool:
        """Queue the snapshot; wait up to `wait_s` for it unless a write is stuck. True
        when this snapshot's write finished (written or failed: `on_result` said which)."""
        with self._cv:
            stuck = self._busy
            self._pending = (snap, durable)
            self._queued += 1
            mine = self._queued
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="status-file", daemon=True)
                self._thread.start()
            self._cv.notify_all()
            if stuck:
                return False  # the disk hangs: the newest snapshot waits, we do not
            deadline = time.monotonic() + wait_s
            while self._done < mine:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None:
                    self._cv.wait()
                (snap, durable), self._pending = self._pending, None
                upto = self._queued
                self._busy = True
            err: Exception | None = None
            try:
                # a value JSON cannot hold (NaN, a numpy scalar: a bug) fails this write
                # only; the thread goes on with the next snapshot
                atomic_write_bytes(self.path, lined_json(snap), durable=durable)
            except (OSError, ValueError, TypeError) as e:
                err = e
            try:
                self._on_result(err)
            finally:
                with self._cv:
                    self._busy = False
                    self._done = upto
                    self._cv.notify_all()
