"""The local event history: every anomaly start/end and sensor event the agent raised,
with the sample times that decided them, kept in the state dir after delivery.

`<state_dir>/events.jsonl`, one JSON object per line, appended and fsynced per event
(events are rare: an alarm opens after several windows). Bounded: when the file passes
MAX_BYTES it becomes `events.jsonl.1` (replacing the older one), so the history holds
between MAX_BYTES and 2 x MAX_BYTES of the newest events. `read_history` reads both,
oldest first, skipping a torn last line (a crash mid-write). Writing never raises into a
stream: an I/O error is logged once and the event still goes to the outbox.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["HISTORY_FILE", "MAX_BYTES", "EventHistory", "read_history"]

log = logging.getLogger(__name__)

HISTORY_FILE = "events.jsonl"
MAX_BYTES = 1024 * 1024


class EventHistory:
    """Appends event records (dicts of JSON values) to `<state_dir>/events.jsonl`."""

    def __init__(self, state_dir: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(state_dir) / HISTORY_FILE
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._failed = False

    def record(self, rec: dict[str, Any]) -> None:
        line = json.dumps({"logged": round(time.time(), 3), **rec}, allow_nan=False) + "\n"
        with self._lock:
            try:
                self._append(line.encode())
                self._failed = False
            except (OSError, ValueError) as e:
                if not self._failed:  # once per failure spell, not per event
                    log.error("event history %s not written: %s", self.path, e)
                self._failed = True

    def _append(self, data: bytes) -> None:
        try:
            if self.path.stat().st_size + len(data) > self.max_bytes:
                os.replace(self.path, self.path.with_name(HISTORY_FILE + ".1"))
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
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
