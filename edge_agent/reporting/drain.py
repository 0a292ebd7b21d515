"""The drain: moves records from the outbox to the link, at most `window` in flight.

One thread owns the mid -> record map, so an acknowledgement can never be matched
before its publish was recorded. A record is deleted when its PUBACK arrives; a
PUBACK with a failure reason (ACL denial) also deletes it (retrying cannot succeed),
and that is counted and logged as an error by the link.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter

from edge_agent.errors import EdgeAgentError, PublishError
from edge_agent.reporting.link import MqttLink
from edge_agent.reporting.outbox import Kind, Outbox

__all__ = ["Drainer"]

log = logging.getLogger(__name__)

# How long the drain sleeps when nothing wakes it (a safety net, not the normal path).
IDLE_POLL_S = 1.0


class Drainer:
    def __init__(self, outbox: Outbox, link: MqttLink, *, window: int) -> None:
        self._outbox = outbox
        self._link = link
        self._window = window
        self._mids: dict[int, tuple[int, Kind]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_publish: float | None = None
        self._rejected: Counter[str] = Counter()
        link.wake_hook = self.wake

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-drain", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The drain thread runs (for the agent's supervisor)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def last_publish(self) -> float | None:
        with self._lock:
            return self._last_publish

    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_POLL_S)
            self._wake.clear()
            try:
                self._collect_acks()
                if self._link.connected:
                    self._fill()
            except EdgeAgentError:
                log.exception("outbox drain: step failed; retrying")
                self._stop.wait(IDLE_POLL_S)

    def _collect_acks(self) -> None:
        done: list[int] = []
        while True:
            try:
                ack = self._link.acks.get_nowait()
            except queue.Empty:
                break
            entry = self._mids.pop(ack.mid, None)
            if entry is None:
                continue  # a command reply, not an outbox record
            done.append(entry[0])
            if ack.reason >= 0x80:
                with self._lock:
                    self._rejected[entry[1].value] += 1
        if done:
            self._outbox.delete(done)
            with self._lock:
                self._last_publish = time.time()

    def _fill(self) -> None:
        free = self._window - len(self._mids)
        if free <= 0:
            return
        inflight = [rid for rid, _ in self._mids.values()]
        for rec in self._outbox.peek(free, exclude=inflight):
            try:
                mid = self._link.publish(rec.topic, rec.payload, retain=rec.retain)
            except PublishError as e:
                # Only a record paho cannot encode ends here; it would fail forever.
                log.error("outbox: record seq %d cannot be published, removed: %s", rec.seq, e)
                self._outbox.delete([rec.id])
                with self._lock:
                    self._rejected[rec.kind.value] += 1
                continue
            self._mids[mid] = (rec.id, rec.kind)
