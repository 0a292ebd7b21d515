"""Wiring and lifecycle: config -> profile -> streams (+ reporting) -> run until stopped.

Threads: one per source (reading), one per stream (scoring); the main thread writes
the status file, sends telemetry and handles signals. Nothing here scores or parses.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError, StateError
from edge_agent.fsutil import atomic_write_json
from edge_agent.pipeline.stream import AnomalyEvent
from edge_agent.profiles import Selection, load_profiles, select
from edge_agent.streams import StreamRuntime

__all__ = ["STATUS_FILE", "Agent", "Reporting", "RunLimits"]

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STATUS_EVERY_S = 1.0
MAX_ERRORS_KEPT = 10


class Reporting(Protocol):
    """What the agent needs from the reporting side (outbox + MQTT)."""

    def start(self) -> None: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def publish_event(self, payload: dict[str, Any]) -> int: ...
    def publish_telemetry(self, payload: dict[str, Any]) -> int: ...
    def snapshot(self) -> dict[str, Any]: ...


class RunLimits:
    def __init__(self, max_windows: int | None = None, duration_s: float | None = None) -> None:
        self.max_windows = max_windows
        self.duration_s = duration_s


class Agent:
    def __init__(self, cfg: AgentConfig, *, limits: RunLimits | None = None) -> None:
        self.cfg = cfg
        self.limits = limits or RunLimits()
        self.state_dir = Path(cfg.state_dir)
        self.stop_event = threading.Event()
        self.streams: list[StreamRuntime] = []
        self.reporter: Reporting | None = None
        self.selection: Selection | None = None
        self.started_at = time.time()
        self.ready = False
        self.errors: deque[dict[str, Any]] = deque(maxlen=MAX_ERRORS_KEPT)
        self.events_total = 0
        self.stop_reason = ""
        self._last_progress = time.monotonic()

    # -- setup -------------------------------------------------------------------
    def prepare(self) -> None:
        """Everything that can fail on bad config or models, before any thread starts."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"state dir {self.state_dir}: {e.strerror} (use --state-dir)") from e
        if not os.access(self.state_dir, os.W_OK):
            raise StateError(f"state dir {self.state_dir} is not writable (use --state-dir)")
        self.selection = select(self.cfg.profile, load_profiles())
        log.info("profile %s: %s", self.selection.profile.name, self.selection.reason)
        models_dir = Path(self.cfg.models_dir) if self.cfg.models_dir else None
        for sc in self.cfg.streams:
            self.streams.append(StreamRuntime(sc, self.cfg, self.selection.profile, models_dir))

    def attach_reporter(self, reporter: Reporting) -> None:
        self.reporter = reporter

    def birth(self) -> dict[str, Any]:
        """Who we are, for the retained status/birth message."""
        return {
            "agent_version": __version__,
            "profile": self.selection.profile.name if self.selection else None,
            "models": [
                {
                    "stream": s.name,
                    "name": s.pipeline.model.card.name,
                    "version": s.pipeline.model.card.version,
                }
                for s in self.streams
            ],
        }

    # -- running -------------------------------------------------------------------
    def _on_event(self, ev: AnomalyEvent) -> None:
        self.events_total += 1
        log.info(
            "anomaly %s on %s: score %.3g (threshold %.3g, model %s v%d)",
            ev.transition.value,
            ev.stream,
            ev.score,
            ev.threshold,
            ev.model,
            ev.model_version,
        )
        if self.reporter is not None:
            self.reporter.publish_event(ev.to_payload())

    def _on_progress(self) -> None:
        self._last_progress = time.monotonic()
        if not self.ready:
            self.ready = True  # models warmed up (prepare) and the first samples scored
        lim = self.limits.max_windows
        if lim is not None and self.windows_total() >= lim:
            self.stop_reason = f"{lim} windows scored"
            self.stop_event.set()

    def windows_total(self) -> int:
        return sum(s.pipeline.stats.windows for s in self.streams)

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        def _handler(signum: int, _frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    def run(self) -> None:
        """Start everything and block until stopped, a limit is reached or all sources end."""
        if self.reporter is not None:
            self.reporter.start()
        for s in self.streams:
            s.start(self._on_event, self.stop_event, self._on_progress)
        deadline = time.monotonic() + self.limits.duration_s if self.limits.duration_s else None
        next_telemetry = time.monotonic() + self.cfg.mqtt.telemetry_interval_s
        try:
            while not self.stop_event.wait(STATUS_EVERY_S):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.request_stop(f"duration {self.limits.duration_s:g} s reached")
                    break
                if self.streams and not any(s.alive for s in self.streams):
                    self.request_stop("all sources finished")
                    break
                if now >= next_telemetry:
                    self.send_telemetry()
                    next_telemetry = now + self.cfg.mqtt.telemetry_interval_s
                self.write_status()
        finally:
            self.shutdown()

    def send_telemetry(self) -> None:
        if self.reporter is None:
            return
        for s in self.streams:
            summary = s.pipeline.take_summary()
            summary.update(
                samples=s.runner.samples_in,
                dropped_blocks=s.runner.dropped_blocks,
                source_state=s.runner.state.value,
            )
            self.reporter.publish_telemetry(summary)

    def shutdown(self) -> None:
        self.stop_event.set()
        for s in self.streams:
            s.join(timeout=5.0)
            if s.error:
                self.record_error(f"stream {s.name}", s.error)
        if self.reporter is not None:
            try:
                self.send_telemetry()
                self.reporter.stop()
            except EdgeAgentError as e:
                self.record_error("reporting", str(e))
        self.write_status(running=False)

    def record_error(self, where: str, message: str) -> None:
        self.errors.append({"ts": time.time(), "where": where, "message": message})

    # -- status --------------------------------------------------------------------
    def snapshot(self, *, running: bool = True) -> dict[str, Any]:
        streams = [s.snapshot() for s in self.streams]
        for s in self.streams:
            if s.runner.last_error and not any(
                e["message"] == s.runner.last_error for e in self.errors
            ):
                self.record_error(f"source {s.name}", s.runner.last_error)
        sel = self.selection
        snap: dict[str, Any] = {
            "v": 1,
            "written_at": time.time(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "running": running,
            "ready": self.ready,
            "stop_reason": self.stop_reason if not running else "",
            "agent_version": __version__,
            "device_id": self.cfg.device_id,
            "profile": {"name": sel.profile.name, "reason": sel.reason} if sel else None,
            "health": {
                "live": running,
                "ready": self.ready and running,
                "last_progress_age_s": round(time.monotonic() - self._last_progress, 3),
            },
            "streams": streams,
            "events_total": self.events_total,
            "windows_total": self.windows_total(),
            "errors": list(self.errors),
        }
        if self.reporter is not None:
            snap.update(self.reporter.snapshot())
        else:
            snap["mqtt"] = {"enabled": False}
        return snap

    def write_status(self, *, running: bool = True) -> None:
        try:
            atomic_write_json(
                self.state_dir / STATUS_FILE, self.snapshot(running=running), durable=not running
            )
        except OSError as e:  # a full disk must not stop scoring; say so once per write
            log.warning("cannot write status: %s", e)
