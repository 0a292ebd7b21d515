"""What the streams find, told to people and to the broker: logs, counters, outbox records.

`EventRelay` is called on the streams' threads (anomaly and sensor-health events), the
updater's (OTA state) and the agent's tick (telemetry). It stores through a narrow
`Publisher` (the reporter); a record that cannot be stored is logged and kept in the
error list, never raised into a stream's scoring loop. Nothing here waits for a disk on
a stream's thread: the history queues its line (EventHistory.record) and the event is
appended to the outbox without waiting for its group fsync (`wait=False`; it is still
durable before it is sent). After `close()` nothing touches the publisher again (its
outbox is closed at shutdown; a late thread must not reach a closed SQLite connection).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from edge_agent.errors import EdgeAgentError
from edge_agent.pipeline.alarms import Transition
from edge_agent.pipeline.sensor_health import HealthEvent
from edge_agent.pipeline.stream import AnomalyEvent
from edge_agent.reporting.history import EventHistory
from edge_agent.service.history_records import anomaly_record, sensor_record
from edge_agent.service.logs import MSG_ANOMALY_END, MSG_ANOMALY_START, fields

__all__ = ["ErrorLog", "EventRelay", "Publisher", "TelemetrySource"]

log = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 10


class Publisher(Protocol):
    def publish_event(self, payload: dict[str, Any], *, wait: bool = True) -> int: ...
    def publish_telemetry(self, payload: dict[str, Any]) -> int: ...
    def publish_ota_state(self, payload: dict[str, Any]) -> int: ...


class TelemetrySource(Protocol):
    """A stream as telemetry sees it."""

    @property
    def name(self) -> str: ...
    def take_telemetry(self) -> Any: ...  # streams.Telemetry
    def model_version(self) -> int: ...


class ErrorLog:
    """The last few errors for status.json: `{"ts", "where", "message"}`, newest last;
    a message repeated back to back is kept once. Thread-safe."""

    def __init__(self, keep: int = MAX_ERRORS_KEPT) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def record(self, where: str, message: str) -> None:
        with self._lock:
            if self._items and self._items[-1]["message"] == message:
                return
            self._items.append({"ts": time.time(), "where": where, "message": message})

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)


class EventRelay:
    def __init__(self, errors: ErrorLog, history: EventHistory | None = None) -> None:
        self.errors = errors
        self.history = history  # the local event log (`edge-agent events`), beside the outbox
        self.events_total = 0
        self.sensor_events_total = 0
        self._publisher: Publisher | None = None
        self._lock = threading.Lock()  # counters, and publisher open/closed

    def attach(self, publisher: Publisher) -> None:
        self._publisher = publisher

    def close(self, timeout: float) -> None:
        """From now on records are only logged (the reporter is stopping). Waits up to
        `timeout` for a write in progress; a write wedged past it is abandoned."""
        got = self._lock.acquire(timeout=max(0.0, timeout))
        self._publisher = None
        if got:
            self._lock.release()

    def _store(self, what: str, send: Callable[[Publisher], object]) -> None:
        with self._lock:
            pub = self._publisher
            if pub is None:
                return
            try:
                send(pub)
            except EdgeAgentError as e:
                log.error("%s not stored: %s", what, e)
                self.errors.record("reporting", f"{what} not stored: {e}")

    def on_event(self, ev: AnomalyEvent) -> None:
        from edge_agent.reporting.payloads import event_body

        with self._lock:
            self.events_total += 1
        if self.history is not None:
            self.history.record(anomaly_record(ev))
        start = ev.transition is Transition.START
        log.warning(
            "anomaly %s on %s: %s %.3g (threshold %.3g, model %s v%d)",
            ev.transition.value,
            ev.stream,
            "score" if start else "peak score",
            ev.score if start else ev.peak,
            ev.threshold,
            ev.model,
            ev.model_version,
            extra=fields(
                stream=ev.stream,
                model_version=ev.model_version,
                message_id=MSG_ANOMALY_START if start else MSG_ANOMALY_END,
            ),
        )
        body = event_body(
            event=ev.transition.value,
            stream=ev.stream,
            score=ev.score,
            threshold=ev.threshold,
            model=ev.model,
            model_version=ev.model_version,
            t_start=ev.started_ts,
            t_end=None if start else ev.ts,
            peak_score=ev.peak,
            t_sample=ev.ts,
            window=(ev.window_start, ev.window_samples) if ev.window_samples else None,
        )
        what = f"anomaly {ev.transition.value} on {ev.stream}"
        self._store(what, lambda p: p.publish_event(body, wait=False))

    def on_health(self, ev: HealthEvent) -> None:
        from edge_agent.reporting.payloads import sensor_event_body

        with self._lock:
            self.sensor_events_total += 1
        if self.history is not None:
            self.history.record(sensor_record(ev))
        where = f"{ev.stream}/{ev.channel}" if ev.channel else ev.stream
        state = "started" if ev.active else "ended"
        log.warning("sensor fault %s on %s %s: %s", ev.condition.value, where, state, ev.detail)
        if ev.active:
            self.errors.record(f"sensor {where}", f"{ev.condition.value}: {ev.detail}")
        body = sensor_event_body(
            stream=ev.stream,
            condition=ev.condition.value,
            channel=ev.channel,
            active=ev.active,
            detail=ev.detail,
            t=ev.ts,
        )
        self._store(f"sensor event on {where}", lambda p: p.publish_event(body, wait=False))

    def on_ota_state(self, body: dict[str, Any]) -> None:
        """An OTA state change (from the updater's thread)."""
        self._store("OTA state", lambda p: p.publish_ota_state(body))

    def send_telemetry(self, streams: Sequence[TelemetrySource]) -> None:
        from edge_agent.reporting.payloads import telemetry_body

        if self._publisher is None:
            return
        for s in streams:
            tel = s.take_telemetry()
            tb = telemetry_body(
                stream=s.name,
                interval_s=tel.interval_s,
                windows=tel.windows,
                score_mean=tel.score_mean,
                score_max=tel.score_max,
                alarms=tel.alarms,
                drops=tel.drops,
                model_version=s.model_version(),
            )
            self._store(f"telemetry of {s.name}", _telemetry_sender(tb))


def _telemetry_sender(body: dict[str, Any]) -> Callable[[Publisher], object]:
    return lambda p: p.publish_telemetry(body)
