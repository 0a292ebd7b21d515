"""Keeps the device's retained fleet state current on the broker (reporting/device_state.py).

Driven by the agent's 1 Hz tick with the status snapshot it just wrote: the sections that
changed (or the health heartbeat) are appended to the outbox as retained records, so they
survive a broker outage like everything else. When the serving models change, the retained
birth (`status`) is published again too, so it never names a model that no longer serves.
After a connect without a kept session (a broker that may have lost its retained
messages) every section is sent again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edge_agent.reporting.device_state import StateGate, build_sections
from edge_agent.service.status import Assessment, assess_own

__all__ = ["DeviceStatePublisher", "StateSink"]

log = logging.getLogger(__name__)


class StateSink(Protocol):
    """What the publisher needs of the reporter."""

    def publish_state(self, section: str, body: Mapping[str, Any]) -> int: ...
    def publish_birth(self) -> int: ...
    def add_connect_listener(self, fn: Callable[[bool], None]) -> None: ...


class DeviceStatePublisher:
    def __init__(
        self,
        sink: StateSink,
        group: str,
        families: Callable[[], Mapping[str, str]],
        *,
        gate: StateGate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._group = group
        self._families = families
        self._gate = gate or StateGate()
        self._clock = clock
        self._resend = threading.Event()  # set on the MQTT thread, read on the tick
        # Nothing before the first connect: a "not connected" verdict queued at start
        # would reach the fleet as a stale DEGRADED; at the first connect all is sent.
        self._connected = threading.Event()
        self._models: Mapping[str, Any] | None = None  # as last sent
        sink.add_connect_listener(self._on_connected)

    def _on_connected(self, session_present: bool) -> None:
        if not session_present:
            self._resend.set()
        self._connected.set()

    def tick(
        self, snap: Mapping[str, Any], now: float, assessment: Assessment | None = None
    ) -> list[str]:
        """Publish what is due for this snapshot (`now`: wall time, for the verdict;
        `assessment`: the snapshot's, when the caller made it already). Returns the
        sections sent. Never raises: the tick must go on."""
        try:
            return self._tick(snap, now, assessment)
        except Exception:  # a fleet view must never stop the agent's tick
            log.exception("device state not published")
            return []

    def _tick(
        self, snap: Mapping[str, Any], now: float, assessment: Assessment | None
    ) -> list[str]:
        if not self._connected.is_set():
            return []
        if self._resend.is_set():
            self._resend.clear()
            self._gate.forget()
        a = assessment if assessment is not None else assess_own(snap, now)
        sections = build_sections(snap, self._families(), self._group, a.verdict.value, a.reasons)
        mono = self._clock()
        due = self._gate.due(sections, mono)
        for name in due:
            body = sections[name]
            if self._sink.publish_state(name, body) < 0:
                continue  # not stored (logged by the reporter): try again next tick
            self._gate.sent(name, body, mono)
        models = sections["models"]
        if "models" in due and models != self._models:
            if self._models is not None:
                # the birth names the serving models: keep the retained one true
                self._sink.publish_birth()
            self._models = models
        return due
