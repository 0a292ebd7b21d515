"""Wiring and lifecycle: config -> profile -> streams + reporting -> run until stopped.

Threads: one per source (reading), one per stream (scoring), the reporter's MQTT
thread; the main thread writes the status file, sends telemetry, talks to systemd
(READY, STATUS, WATCHDOG only while the pipeline makes progress) and handles signals.
Nothing here scores, parses or publishes by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError, StateError
from edge_agent.fsutil import atomic_write_json
from edge_agent.pipeline.alarms import Transition
from edge_agent.pipeline.sensor_health import HealthEvent
from edge_agent.pipeline.stream import AnomalyEvent
from edge_agent.profiles import Selection, load_profiles, select
from edge_agent.service.health import ProgressWatchdog, Readiness, ReadinessGate
from edge_agent.service.logs import (
    MSG_AGENT_READY,
    MSG_AGENT_STOPPING,
    MSG_ANOMALY_END,
    MSG_ANOMALY_START,
    MSG_WATCHDOG_STALL,
    fields,
)
from edge_agent.service.sdnotify import Notifier, watchdog_interval
from edge_agent.service.status import summary_line
from edge_agent.streams import StreamRuntime
from edge_agent.updates import manual_rollback as mr

if TYPE_CHECKING:
    from edge_agent.updates.boot import SlotBoot
    from edge_agent.updates.updater import Updater

__all__ = ["STATUS_FILE", "Agent", "Reporting", "RunLimits"]

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
TICK_S = 1.0  # status file, STATUS=, stall checks
MAX_ERRORS_KEPT = 10
MODEL_LOAD_EXTEND_S = 60.0  # EXTEND_TIMEOUT_USEC grant while models load and warm up


class Reporting(Protocol):
    """What the agent needs from the reporting side (outbox + MQTT)."""

    def start(self) -> None: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def publish_event(self, payload: dict[str, Any]) -> int: ...
    def publish_telemetry(self, payload: dict[str, Any]) -> int: ...
    def publish_ota_state(self, payload: dict[str, Any]) -> int: ...
    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...


class RunLimits:
    def __init__(self, max_windows: int | None = None, duration_s: float | None = None) -> None:
        self.max_windows = max_windows
        self.duration_s = duration_s


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        limits: RunLimits | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.limits = limits or RunLimits()
        self.state_dir = Path(cfg.state_dir)
        self.stop_event = threading.Event()
        self._wake = threading.Event()  # stop, or readiness reached: act before the next tick
        self.streams: list[StreamRuntime] = []
        self.reporter: Reporting | None = None
        self.selection: Selection | None = None
        self.started_at = time.time()
        self.errors: deque[dict[str, Any]] = deque(maxlen=MAX_ERRORS_KEPT)
        self.events_total = 0
        self.sensor_events_total = 0
        self.stop_reason = ""
        self.notifier = notifier or Notifier.from_env()
        self.gate = ReadinessGate()
        self.watchdog = ProgressWatchdog(cfg.health.stall_after_s)
        self.wd_interval = watchdog_interval() if cfg.health.watchdog else None
        self._lock = threading.Lock()
        self.on_status: Callable[[dict[str, Any]], None] | None = None  # e.g. metrics
        self.boot: SlotBoot | None = None  # OTA slots at start (None: OTA disabled)
        self.updater: Updater | None = None
        self.ota_note = ""  # why OTA is off, for status

    @property
    def ready(self) -> bool:
        return self.gate.ready

    # -- setup -------------------------------------------------------------------
    def prepare(self) -> None:
        """Everything that can fail on bad config or models, before any thread starts."""
        self.gate.mark(Readiness.CONFIG_VALIDATED)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"state dir {self.state_dir}: {e.strerror} (use --state-dir)") from e
        if not os.access(self.state_dir, os.W_OK):
            raise StateError(f"state dir {self.state_dir} is not writable (use --state-dir)")
        self.selection = select(self.cfg.profile, load_profiles())
        log.info("profile %s: %s", self.selection.profile.name, self.selection.reason)
        models_dir = Path(self.cfg.models_dir) if self.cfg.models_dir else None
        self.notifier.status("loading models")
        loader = None
        if self.cfg.ota.enabled:
            from edge_agent.updates.boot import SlotBoot

            self.boot = SlotBoot.open(self.state_dir)
            loader = self.boot.load
        with self.notifier.extending(MODEL_LOAD_EXTEND_S):
            for sc in self.cfg.streams:
                self.streams.append(
                    StreamRuntime(sc, self.cfg, self.selection.profile, models_dir, loader=loader)
                )
        if self.boot is not None:
            for note in self.boot.notes:
                self.record_error("ota", note)
            self._make_updater()
        self.gate.mark(Readiness.MODELS_WARMED)
        hops = [s.pipeline.hop for s in self.streams] or [1]
        self.watchdog = ProgressWatchdog(
            self.cfg.health.stall_after_s, samples_per_window=min(hops)
        )

    def _make_updater(self) -> None:
        """OTA needs a trusted root; without one, updates are refused (and status says so)."""
        assert self.selection is not None
        if not self.cfg.ota.root_file:
            self.ota_note = "no ota.root_file configured: updates are not accepted"
            log.info("OTA: %s", self.ota_note)
            return
        # only now: signature checks (cryptography) cost ~8 MB a device without OTA lacks
        from datetime import datetime, timezone

        from edge_agent.updates.updater import Updater, UpdateTarget, load_root

        try:
            root = load_root(Path(self.cfg.ota.root_file), datetime.now(timezone.utc))
        except EdgeAgentError as e:
            self.ota_note = f"trusted root unusable, updates are not accepted: {e}"
            self.record_error("ota", self.ota_note)
            return
        self.updater = Updater(
            state_dir=self.state_dir,
            ota=self.cfg.ota,
            profile=self.selection.profile,
            root=root,
            targets=[UpdateTarget(s.pipeline, s.config) for s in self.streams],
            publish=self._publish_ota,
            store=self.boot.store if self.boot is not None else None,
        )

    def _start_updater(self) -> None:
        if self.updater is not None:
            self.updater.start()

    def _publish_ota(self, body: dict[str, Any]) -> None:
        if self.reporter is not None:
            self.reporter.publish_ota_state(body)

    def attach_reporter(self, reporter: Reporting) -> None:
        """Also subscribes the updater to its announcements (fleet group and device)."""
        self.reporter = reporter
        if self.updater is not None:
            from ota.announce import device_topic, fleet_topic

            prefix, updater = self.cfg.mqtt.prefix, self.updater
            for flt in (
                fleet_topic(self.cfg.ota.group, prefix),
                device_topic(self.cfg.device_id, prefix),
            ):
                reporter.subscribe(flt, lambda _t, payload: updater.on_announcement(payload))

    def birth(self) -> dict[str, Any]:
        """Who we are, for the retained status/birth message."""
        return {
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

    # -- callbacks from stream threads ---------------------------------------------
    def _on_event(self, ev: AnomalyEvent) -> None:
        from edge_agent.reporting.payloads import event_body

        with self._lock:
            self.events_total += 1
        start = ev.transition is Transition.START
        log.warning(
            "anomaly %s on %s: score %.3g (threshold %.3g, model %s v%d)",
            ev.transition.value,
            ev.stream,
            ev.peak if not start else ev.score,
            ev.threshold,
            ev.model,
            ev.model_version,
            extra=fields(
                stream=ev.stream,
                model_version=ev.model_version,
                message_id=MSG_ANOMALY_START if start else MSG_ANOMALY_END,
            ),
        )
        if self.reporter is not None:
            self.reporter.publish_event(
                event_body(
                    event=ev.transition.value,
                    stream=ev.stream,
                    score=ev.score,
                    threshold=ev.threshold,
                    model=ev.model,
                    model_version=ev.model_version,
                    t_start=ev.started_ts,
                    t_end=None if start else ev.ts,
                    peak_score=ev.peak,
                )
            )

    def _on_health(self, ev: HealthEvent) -> None:
        from edge_agent.reporting.payloads import sensor_event_body

        with self._lock:
            self.sensor_events_total += 1
        where = f"{ev.stream}/{ev.channel}" if ev.channel else ev.stream
        state = "started" if ev.active else "ended"
        log.warning("sensor fault %s on %s %s: %s", ev.condition.value, where, state, ev.detail)
        if ev.active:
            self.record_error(f"sensor {where}", f"{ev.condition.value}: {ev.detail}")
        if self.reporter is not None:
            self.reporter.publish_event(
                sensor_event_body(
                    stream=ev.stream,
                    condition=ev.condition.value,
                    channel=ev.channel,
                    active=ev.active,
                    detail=ev.detail,
                    t=ev.ts,
                )
            )

    def _on_progress(self) -> None:
        if not self.gate.ready:
            self.gate.mark(Readiness.FIRST_SAMPLE)
            self._wake.set()  # send READY=1 now, not at the next status tick
        lim = self.limits.max_windows
        if lim is not None and self.windows_total() >= lim:
            self.request_stop(f"{lim} windows scored")

    # -- running -------------------------------------------------------------------
    def windows_total(self) -> int:
        return sum(s.pipeline.stats.windows for s in self.streams)

    def samples_total(self) -> int:
        return sum(s.runner.samples_in for s in self.streams)

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop_event.set()
        self._wake.set()

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
            s.start(self._on_event, self._on_health, self.stop_event, self._on_progress)
        self._start_updater()
        now = time.monotonic()
        deadline = now + self.limits.duration_s if self.limits.duration_s else None
        next_telemetry = now + self.cfg.mqtt.telemetry_interval_s
        next_wd = now
        tick = min(TICK_S, self.wd_interval) if self.wd_interval else TICK_S
        announced_ready = False
        try:
            while True:
                self._wake.wait(tick)
                self._wake.clear()
                if self.stop_event.is_set():
                    break
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
                self._poll_manual_rollback()
                snap = self.write_status()
                line = summary_line(snap, time.time())
                if self.gate.ready and not announced_ready:
                    announced_ready = True
                    self.notifier.ready(line)
                    log.info("ready: %s", line, extra=fields(message_id=MSG_AGENT_READY))
                elif self.gate.ready:
                    self.notifier.status(line)
                else:
                    self.notifier.status(self.gate.describe())
                # The stall check runs every tick, so status shows a stall even
                # without systemd's watchdog; pings only go out at its interval.
                progressing = self._check_progress(now)
                if self.wd_interval is not None and now >= next_wd and progressing:
                    next_wd = now + self.wd_interval
                    self.notifier.watchdog()
        finally:
            self.shutdown()

    # -- manual rollback (edge-agent rollback while running; see manual_rollback.py) ----
    def _poll_manual_rollback(self) -> None:
        req = mr.take(self.state_dir)
        if req is None:
            return
        log.info("manual rollback requested: %s", req.reason)
        if self.boot is None:
            mr.write_result(
                self.state_dir, req, False, "OTA is off in this agent's config (ota.enabled)"
            )
        elif self.updater is None:
            self._manual_rollback(req)
        elif not self.updater.call_between_updates(lambda: self._manual_rollback(req)):
            mr.write_result(self.state_dir, req, False, "the updater is busy: ask again")

    def _manual_rollback(self, req: mr.Request) -> None:
        from datetime import datetime, timezone

        assert self.boot is not None
        assert self.selection is not None
        streams = [
            mr.ServedStream(s.name, s.pipeline, s.config, s.bundled_dir) for s in self.streams
        ]
        try:
            before, served = mr.perform(
                self.boot, streams, self.selection.profile, req, datetime.now(timezone.utc)
            )
        except EdgeAgentError as e:
            log.warning("manual rollback refused: %s", e)
            mr.write_result(self.state_dir, req, False, str(e))
            return
        message = f"rolled back from v{before}: {served}"
        log.warning("manual rollback (%s): %s", req.reason, message)
        detail = f"manual: {req.reason}"
        if self.updater is not None:
            self.updater.report("rolled_back", before, detail)
        else:  # no updater: still tell the fleet which model serves now
            from edge_agent.reporting.payloads import ota_state_body

            try:
                self._publish_ota(
                    ota_state_body(state="rolled_back", version=before, detail=detail)
                )
            except EdgeAgentError as e:
                log.warning("OTA: cannot publish the manual rollback: %s", e)
        mr.write_result(
            self.state_dir, req, True, message, pid=os.getpid(), rolled_back_from=before
        )

    def _check_progress(self, now: float) -> bool:
        """True while samples arrive and windows get scored. WATCHDOG=1 is sent only
        then, so a stalled source or a hung inference gets the service restarted."""
        expecting = any(s.alive and not s.runner.done for s in self.streams)
        was_ok = self.watchdog.last.ok
        ok = self.watchdog.should_ping(
            self.samples_total(), self.windows_total(), now, expecting_data=expecting
        )
        if was_ok and not ok:  # once per stall, not every tick
            log.error(
                "pipeline stalled, withholding watchdog: %s",
                self.watchdog.last.reason,
                extra=fields(message_id=MSG_WATCHDOG_STALL),
            )
        elif ok and not was_ok:
            log.warning("pipeline moves again, watchdog resumed")
        return ok

    def send_telemetry(self) -> None:
        if self.reporter is None:
            return
        from edge_agent.reporting.payloads import telemetry_body

        for s in self.streams:
            tel = s.take_telemetry()
            self.reporter.publish_telemetry(
                telemetry_body(
                    stream=s.name,
                    interval_s=tel.interval_s,
                    windows=tel.windows,
                    score_mean=tel.score_mean,
                    score_max=tel.score_max,
                    alarms=tel.alarms,
                    drops=tel.drops,
                    model_version=s.pipeline.model.card.version,
                )
            )

    def shutdown(self) -> None:
        self.stop_event.set()
        self.notifier.stopping(f"stopping: {self.stop_reason or 'requested'}")
        log.info("stopping: %s", self.stop_reason, extra=fields(message_id=MSG_AGENT_STOPPING))
        if self.updater is not None:
            self.updater.stop()
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
        with self._lock:
            if self.errors and self.errors[-1]["message"] == message:
                return
            self.errors.append({"ts": time.time(), "where": where, "message": message})

    # -- status --------------------------------------------------------------------
    def snapshot(self, *, running: bool = True) -> dict[str, Any]:
        for s in self.streams:
            if s.runner.last_error:
                self.record_error(f"source {s.name}", s.runner.last_error)
        streams = [s.snapshot() for s in self.streams]
        sel = self.selection
        wd = self.watchdog.last
        snap: dict[str, Any] = {
            "v": 1,
            "written_at": time.time(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "running": running,
            "ready": self.gate.ready,
            "stop_reason": self.stop_reason if not running else "",
            "agent_version": __version__,
            "device_id": self.cfg.device_id,
            "profile": {"name": sel.profile.name, "reason": sel.reason} if sel else None,
            "health": {
                "live": running and wd.ok,
                "ready": self.gate.ready and running,
                "verdict_hints": [wd.reason] if wd.reason else [],
                "watchdog": self.wd_interval is not None,
                "notify": self.notifier.via,
            },
            "streams": streams,
            "events_total": self.events_total,
            "sensor_events_total": self.sensor_events_total,
            "windows_total": self.windows_total(),
            "errors": list(self.errors),
            "ota": self._ota_snapshot(),
        }
        if self.reporter is not None:
            snap.update(self.reporter.snapshot())
        else:
            snap["mqtt"] = {"enabled": False}
        return snap

    def _ota_snapshot(self) -> dict[str, Any]:
        if self.updater is not None:
            snap = self.updater.snapshot()
        elif self.boot is not None:
            st = self.boot.store.state
            snap = {
                "enabled": False,
                "state": "off",
                "active_slot": None if st.active is None else st.active.value,
                "active_version": st.active_version,
                "last_result": st.last_result,
            }
        else:
            snap = {"enabled": False, "state": "off"}
        if self.ota_note:
            snap["note"] = self.ota_note
        if self.boot is not None:
            snap["model_source"] = dict(self.boot.sources)
        return snap

    def write_status(self, *, running: bool = True) -> dict[str, Any]:
        snap = self.snapshot(running=running)
        try:
            atomic_write_json(self.state_dir / STATUS_FILE, snap, durable=not running)
        except OSError as e:  # a full disk must not stop scoring
            log.warning("cannot write status: %s", e)
        if self.on_status is not None:
            self.on_status(snap)
        return snap
