"""The local event history: every anomaly start/end and sensor event the agent raised,
with the sample times that decided them, kept in the state dir after delivery.

`<state_dir>/events.jsonl`, one JSON object per line. `record()` is called on a stream's
scoring thread, so it never touches the disk: it queues the line and returns. One writer
thread per history appends every line waiting at that moment with one write and one
fsync (a group), oldest first. The queue is bounded (QUEUE_MAX lines): while the disk
hangs the oldest waiting lines are dropped, counted and logged once per spell. `close()`
(the agent's stop path) writes what is queued, within its timeout.

A line queued but not yet fsynced is lost to a kill -9 or power cut, like the samples
still in flight; the window is one group's write + fsync (the outbox, written beside
this history, keeps the alarm itself: docs/adr/0003-outbox-semantics.md).

Bounded on disk: when the file would pass MAX_BYTES it becomes `events.jsonl.1`
(replacing the older one), so the history holds between MAX_BYTES and 2 x MAX_BYTES of
the newest events. `read_history` reads both, oldest first, skipping a torn line (a
crash or a full disk mid-write); the writer ends a torn last line with a newline before
it appends, so the torn line never swallows the next event. Writing never raises into a
stream: an I/O error is logged once per failure spell and the event still goes to the
outbox.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["HISTORY_FILE", "MAX_BYTES", "QUEUE_MAX", "EventHistory", "read_history"]

log = logging.getLogger(__name__)

HISTORY_FILE = "events.jsonl"
MAX_BYTES = 1024 * 1024
# Lines waiting for the writer (~300 bytes each: ~300 kB at worst). Events are rare (an
# alarm opens after several windows), so a full queue means the disk hangs.
QUEUE_MAX = 1024


class EventHistory:
    """Appends event records (dicts of JSON values) to `<state_dir>/events.jsonl` from
    its own writer thread (started on the first record)."""

    def __init__(
        self, state_dir: Path, max_bytes: int = MAX_BYTES, queue_max: int = QUEUE_MAX
    ) -> None:
        self.path = Path(state_dir) / HISTORY_FILE
        self.max_bytes = max_bytes
        self.queue_max = queue_max
        # _cv guards the queue and the flags below; never held across disk I/O.
        self._cv = threading.Condition()
        self._queue: deque[bytes] = deque()
        self._writing = 0  # lines the writer took and has not finished with
        self._closed = False
        self._thread: threading.Thread | None = None
        self._failed = False  # only the writer reads and sets it
        self.dropped = 0  # lines dropped because the queue was full (or after close)
        self._dropping = False  # a drop spell was logged; cleared when the queue empties

    def record(self, rec: dict[str, Any]) -> None:
        """Queue one record; returns at once (never waits for the disk, never raises on
        a storage fault)."""
        line = json.dumps({"logged": round(time.time(), 3), **rec}, allow_nan=False) + "\n"
        with self._cv:
            if self._closed:
                self._drop_locked("the history is closed")
                return
            if len(self._queue) >= self.queue_max:
                self._queue.popleft()
                self._drop_locked(f"{self.queue_max} lines wait for the disk")
            self._queue.append(line.encode())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="event-history", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _drop_locked(self, why: str) -> None:
        self.dropped += 1
        if not self._dropping:  # once per spell, not per event
            self._dropping = True
            log.error("event history %s: dropping the oldest lines (%s)", self.path, why)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s until everything queued so far is written; True if it
        is (or the writer gave up on it after an I/O error, which it logged)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._queue or self._writing:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cv.wait(left)
            return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (up to `timeout` s), then stop the writer. Later records
        are dropped and counted. Lines still queued at the deadline are logged as lost."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout))
        with self._cv:
            left = len(self._queue) + self._writing
        if left:
            log.error("event history %s closed with %d line(s) not written", self.path, left)

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return  # closed, and everything is written
                lines = list(self._queue)
                self._queue.clear()
                self._writing = len(lines)
            try:
                self._write(lines)
                self._failed = False
            except (OSError, ValueError) as e:
                if not self._failed:  # once per failure spell, not per group
                    log.error("event history %s not written: %s", self.path, e)
                self._failed = True
            finally:
                with self._cv:
                    self._writing = 0
                    if not self._queue:
                        self._dropping = False
                    self._cv.notify_all()

    def _write(self, lines: list[bytes]) -> None:
        """Append the lines: one write and one fsync, plus one more of each per rotation
        (a line that would take the file past max_bytes starts a new one)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = 0
        chunk: list[bytes] = []
        for line in lines:
            if size + len(line) > self.max_bytes and size > 0:
                if chunk:
                    self._append(b"".join(chunk))
                    chunk = []
                os.replace(self.path, self.path.with_name(HISTORY_FILE + ".1"))
                size = 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._append(b"".join(chunk))

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size and _last_byte(self.path) != b"\n":
                # A group written only in part (disk full, a crash) left a torn line: end
                # it, so it stays its own (skipped) line instead of swallowing our first.
                data = b"\n" + data
            view = memoryview(data)
            while view:  # a regular file takes it all at once, except near a full disk
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


def _last_byte(path: Path) -> bytes:
    """The file's last byte (b"" when empty)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, 1, size - 1) if size else b""
    finally:
        os.close(fd)


def read_history(state_dir: Path) -> Iterator[dict[str, Any]]:
    """Every stored record, oldest first (the rotated file, then the current one)."""
    base = Path(state_dir) / HISTORY_FILE
    for path in (base.with_name(HISTORY_FILE + ".1"), base):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash mid-write
            if isinstance(rec, dict):
                yield rec
