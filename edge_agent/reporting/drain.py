"""The drain: moves records from the outbox to the link, at most `window` in flight.

The mid -> record map is touched only under the step lock, by one step at a time (the
drain thread's, or the outbox writer's offer below) that records a publish's mid before
it collects acknowledgements, so an acknowledgement can never be matched before its
publish was recorded. A record is deleted when its PUBACK arrives; a
PUBACK with a failure reason (ACL denial) also deletes it (retrying cannot succeed),
and that is counted and logged as an error by the link. A message the link stopped
sending because a newer retained one to its topic was queued (Ack reason SUPERSEDED) is
only forgotten: the outbox decides whether its record is still due (a newer status
record has replaced it there).

The thread survives anything: a failed step (the database locked for a delete, a raw
sqlite error, a bug) is logged, backed off and retried; acknowledged records whose
delete failed are remembered and deleted later, never re-sent meanwhile.

A broker that accepts the connection but never acknowledges is caught here: when the
oldest in-flight message has waited `ack_timeout_s` on a connection that is up (counted
from the later of its publish and the connect), the link is told to reconnect.

Records the outbox's writer has just made durable are offered by the writer's own thread
(`_on_durable`) when the drain is idle and its last step went well: the same `_fill`,
under the same step lock, so the order and the mid bookkeeping are the drain's. Waking
the drain thread instead cost a GIL hand-over per event (p99 ~4 ms of the sample to
subscriber tail at 16 real-time streams, docs/benchmarks/agent.md). Everything else
(acks, deletes, the ack timeout, failures and their backoff) stays on the drain thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter

from edge_agent.errors import OutboxError, PublishError
from edge_agent.reporting.link import SUPERSEDED, MqttLink
from edge_agent.reporting.outbox import Kind, Outbox

__all__ = ["ACK_TIMEOUT_S", "Drainer"]

log = logging.getLogger(__name__)

# How long the drain sleeps when nothing wakes it (a safety net, not the normal path).
IDLE_POLL_S = 1.0
# After a failed step the drain waits this long, doubling up to the maximum.
RETRY_MAX_S = 10.0
# Default acknowledgement timeout (mqtt.ack_timeout_s): a PUBACK slower than this on a
# live connection means the broker (or the path to it) is wedged.
ACK_TIMEOUT_S = 30.0
# A failing step is logged again at most this often.
_LOG_EVERY_S = 60.0


class Drainer:
    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        *,
        window: int,
        ack_timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        self._outbox = outbox
        self._link = link
        self._window = window
        self._ack_timeout_s = ack_timeout_s
        self._mids: dict[int, tuple[int, Kind]] = {}
        self._sent_at: dict[int, float] = {}  # mid -> when published (unix s)
        self._acked: list[int] = []  # record ids acknowledged, delete still to do
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_publish: float | None = None
        self._rejected: Counter[str] = Counter()
        self._ack_timeouts = 0
        # the oldest send no PUBACK followed, across reconnects; None once one comes
        self._unacked_since: float | None = None
        self._failures = 0
        self._last_failure: str | None = None
        # held for each step, by the drain thread or by the writer's _on_durable
        self._step_lock = threading.Lock()
        self._backing_off = False  # the last step failed: only the drain thread steps
        link.wake_hook = self.wake
        # records appended without waiting become durable later: offer them then
        outbox.on_durable = self._on_durable

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

    def _on_durable(self) -> None:
        """Called by the outbox's writer (no lock held) after a group became durable:
        offer new records on this thread when the drain is idle and healthy, else wake
        the drain thread. Never raises into the writer."""
        if self._stop.is_set() or self._backing_off or not self._link.connected:
            self._wake.set()
            return
        if not self._step_lock.acquire(blocking=False):
            self._wake.set()  # the drain is stepping: it looks again after its step
            return
        try:
            self._fill(time.time())
            if self._acked:  # a record that cannot be published: the drain deletes it
                self._wake.set()
        except Exception:  # noqa: BLE001 - the drain thread redoes it, logs and backs off
            self._wake.set()
        finally:
            self._step_lock.release()

    @property
    def last_publish(self) -> float | None:
        with self._lock:
            return self._last_publish

    @property
    def ack_timeouts(self) -> int:
        """How often the link was reconnected because no PUBACK came in time."""
        with self._lock:
            return self._ack_timeouts

    @property
    def unacked_since(self) -> float | None:
        """Since when (unix s) the broker has acknowledged nothing, once an ack timeout
        fired; None after any PUBACK. Survives the reconnects the timeouts cause."""
        with self._lock:
            return self._unacked_since

    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    def _run(self) -> None:
        delay = IDLE_POLL_S
        logged = 0.0
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            try:
                with self._step_lock:
                    try:
                        self._step(time.time())
                    except Exception:
                        self._backing_off = True
                        raise
                    self._backing_off = False
                delay = IDLE_POLL_S
            except Exception as e:  # this thread must outlive any failure
                with self._lock:
                    self._failures += 1
                    self._last_failure = str(e)
                if time.monotonic() - logged > _LOG_EVERY_S:
                    logged = time.monotonic()
                    log.error("outbox drain: step failed (%s); retrying", e, exc_info=True)
                delay = min(RETRY_MAX_S, delay * 2)

    def _step(self, now: float) -> None:
        self._collect_acks()
        failed = self._delete_acked()
        if self._link.connected:
            self._check_ack_timeout(now)
            self._fill(now)
            failed = self._delete_acked() or failed
        if failed is not None:
            # Sending went on (a locked database still reads); the run loop counts,
            # logs and backs off on the failed delete.
            raise failed

    def _collect_acks(self) -> None:
        done: list[int] = []
        while True:
            try:
                ack = self._link.acks.get_nowait()
            except queue.Empty:
                break
            self._sent_at.pop(ack.mid, None)
            entry = self._mids.pop(ack.mid, None)
            if entry is None:
                continue  # a command reply, not an outbox record
            if ack.reason == SUPERSEDED:
                continue  # not delivered: peek() offers the record again if still stored
            done.append(entry[0])
            if ack.reason >= 0x80:
                with self._lock:
                    self._rejected[entry[1].value] += 1
        if done:
            self._acked.extend(done)
            with self._lock:
                self._last_publish = time.time()
                self._unacked_since = None

    def _delete_acked(self) -> OutboxError | None:
        """Delete what was acknowledged; on failure (database locked, disk) the ids are
        kept for a later step and the error is returned, not raised, so that a delete
        that cannot happen never stops new records from being sent."""
        if not self._acked:
            return None
        try:
            self._outbox.delete(self._acked)
        except OutboxError as e:  # kept; excluded from peek() until deleted
            return e
        self._acked = []
        return None

    def _check_ack_timeout(self, now: float) -> None:
        if not self._sent_at:
            return
        up_since = self._link.stats().since or now
        waited = now - max(min(self._sent_at.values()), up_since)
        if waited <= self._ack_timeout_s:
            return
        self._link.force_reconnect(
            f"broker {self._link.broker} acknowledged none of {len(self._sent_at)} message(s) "
            f"for {waited:.0f} s (mqtt.ack_timeout_s = {self._ack_timeout_s:g}); reconnecting"
        )
        with self._lock:
            self._ack_timeouts += 1
            if self._unacked_since is None:
                self._unacked_since = min(self._sent_at.values())
        # paho re-sends them after the reconnect: their clock starts again then.
        for mid in self._sent_at:
            self._sent_at[mid] = now

    def _fill(self, now: float) -> None:
        free = self._window - len(self._mids)
        if free <= 0:
            return
        busy = [rid for rid, _ in self._mids.values()] + self._acked
        for rec in self._outbox.peek(free, exclude=busy):
            try:
                mid = self._link.publish(rec.topic, rec.payload, retain=rec.retain)
            except PublishError as e:
                # Only a record paho cannot encode ends here; it would fail forever.
                log.error("outbox: record seq %d cannot be published, removed: %s", rec.seq, e)
                self._acked.append(rec.id)
                with self._lock:
                    self._rejected[rec.kind.value] += 1
                continue
            self._mids[mid] = (rec.id, rec.kind)
            self._sent_at[mid] = now
