"""Wiring and lifecycle: config -> profile -> streams + reporting -> supervised run -> stop.

Every long-lived loop (each stream's scoring loop with its source reader, the reporting
threads, the updater, the metrics server) runs under the supervisor
(`service/supervisor.py`): a failing one is restarted within its budget, never taking
the process down. The main thread runs the guarded 1 Hz tick (status file, telemetry,
manual rollback requests, systemd's STATUS=) and sends READY=1 once config, models and
outbox are up, and WATCHDOG=1 while every supervised loop turns (docs/status.md).
What streams find goes out through `service/events.py`; the OTA side lives in
`updates/ota_runtime.py`; the status snapshot is built in `service/snapshot.py`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.backoff import RestartBudget
from edge_agent.config import AgentConfig
from edge_agent.errors import StateError
from edge_agent.profiles import Profile, Selection, load_profiles, select
from edge_agent.reporting.history import EventHistory
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import SchedulerSet
from edge_agent.service.events import ErrorLog, EventRelay
from edge_agent.service.faults import Faults
from edge_agent.service.fleet_state import DeviceStatePublisher
from edge_agent.service.health import (
    ProgressWatchdog,
    Readiness,
    ReadinessGate,
    StallCheck,
    liveness,
)
from edge_agent.service.lifecycle import TickGuard, stop_in_parallel
from edge_agent.service.logs import MSG_AGENT_READY, MSG_AGENT_STOPPING, MSG_WATCHDOG_STALL, fields
from edge_agent.service.sdnotify import Notifier, watchdog_interval
from edge_agent.service.snapshot import HealthSection, SnapshotParts, build_snapshot
from edge_agent.service.statelock import StateDirLock
from edge_agent.service.status import assess_own, summary_line
from edge_agent.service.status_file import StatusFile
from edge_agent.service.supervisor import ComponentStatus, Supervisor, watch
from edge_agent.streams import StreamRuntime, StreamSinks
from edge_agent.updates.ota_runtime import OtaRuntime

if TYPE_CHECKING:
    from edge_agent.serving.http import Endpoint

__all__ = ["SHUTDOWN_S", "STATUS_FILE", "Agent", "Reporting", "RunLimits"]

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
TICK_S = 1.0  # status file, STATUS=, telemetry, rollback requests
MODEL_LOAD_EXTEND_S = 60.0  # EXTEND_TIMEOUT_USEC granted before each model load
SHUTDOWN_S = 20.0  # everything stops within this (the unit's TimeoutStopSec is 30)
REPORTER_RESERVE_S = 7.0  # of SHUTDOWN_S kept for final telemetry, drain grace, close
DRAIN_GRACE_S = 4.0  # at stop, while connected: let the outbox drain this long at most
MIN_HANG_S = 5.0  # a loop silent this long (or stall_after_s, if longer) is hung


class Reporting(Protocol):
    """What the agent needs from the reporting side (outbox + MQTT)."""

    def start(self) -> None: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def publish_event(self, payload: dict[str, Any], *, wait: bool = True) -> int: ...
    def publish_telemetry(self, payload: dict[str, Any]) -> int: ...
    def publish_ota_state(self, payload: dict[str, Any]) -> int: ...
    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...
    def dead_threads(self) -> list[str]: ...
    def outbox_writer(self) -> tuple[bool, float]: ...
    def restart_dead_threads(self) -> None: ...


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
        self.streams: list[StreamRuntime] = []
        self.pool: ModelPool | None = None
        self.schedulers: SchedulerSet | None = None
        self.serving: Endpoint | None = None  # [serving]: the local inference endpoint
        self.reporter: Reporting | None = None
        self.selection: Selection | None = None
        self.started_at = time.time()
        self.errors = ErrorLog()
        self.history = EventHistory(self.state_dir)  # written by its own thread
        self.relay = EventRelay(self.errors, self.history)
        self.stop_reason = ""
        self.notifier = notifier or Notifier.from_env()
        self.gate = ReadinessGate()
        self.progress = ProgressWatchdog(cfg.health.stall_after_s)
        self.wd_interval = watchdog_interval() if cfg.health.watchdog else None
        self.supervisor = Supervisor(
            budget=cfg.health.restart_budget,
            window_s=cfg.health.restart_window_s,
            retry_failed_s=cfg.health.retry_failed_s,
            hang_after_s=max(cfg.health.stall_after_s, MIN_HANG_S),
            faults=Faults.from_env(),
            on_error=self.errors.record,
        )
        self.stop_event = self.supervisor.stop_event
        self._wake = threading.Event()  # stop requested: act before the next tick
        self.ota = OtaRuntime(cfg, self.state_dir, self.errors.record)
        self.on_status: Callable[[dict[str, Any]], None] | None = None  # e.g. metrics
        # more views of each snapshot (e.g. Home Assistant), called after on_status
        self.status_listeners: list[Callable[[dict[str, Any]], None]] = []
        # retained fleet state, fed each tick (service/fleet_state.py); None without MQTT
        self.device_state: DeviceStatePublisher | None = None
        self._lock: StateDirLock | None = None
        self._live = StallCheck(True)
        self._status_unwritable = False
        # written by its own thread: a hung state disk must not stop the main loop
        self._status_file = StatusFile(self.state_dir / STATUS_FILE, self._status_written)
        budget = RestartBudget(cfg.health.restart_budget, cfg.health.restart_window_s)
        self._tick = TickGuard(budget)

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
        _refuse_foreign_state_dir_as_root(self.state_dir)
        self._lock = StateDirLock.acquire(self.state_dir)
        self.selection = select(self.cfg.profile, load_profiles())
        log.info("profile %s: %s", self.selection.profile.name, self.selection.reason)
        models_dir = Path(self.cfg.models_dir) if self.cfg.models_dir else None
        self.notifier.status("loading models")
        loader = self.ota.open_slots()
        # Every stream of one model variant shares one loaded model, under the budget.
        self.pool = pool = ModelPool(self.selection.profile, loader=loader)
        # ... and one supervised inference scheduler per loaded model batches their windows.
        self.schedulers = scheds = SchedulerSet(self.selection.profile)
        scheds.on_new = lambda name, sched: self.supervisor.add(name, sched.run, transient=True)
        pool.on_load = lambda e: scheds.add(e.model)
        pool.on_evict = lambda e: scheds.remove(e.model)
        # One grant per model, from this thread: a load that hangs stops the extension.
        with self.notifier.extending(MODEL_LOAD_EXTEND_S) as grant:
            for sc in self.cfg.streams:
                grant.step()
                self.streams.append(
                    StreamRuntime(
                        sc,
                        self.cfg,
                        self.selection.profile,
                        models_dir,
                        pool=self.pool,
                        schedulers=self.schedulers,
                    )
                )
        self.ota.after_models_loaded(self.streams, self.selection.profile)
        self.gate.mark(Readiness.MODELS_WARMED)
        if self.cfg.serving.enabled:  # bound now: a taken address fails the start
            from edge_agent.serving.setup import open_endpoint

            self.serving = open_endpoint(
                self.cfg,
                self.selection.profile,
                pool=pool,
                schedulers=scheds,
                streams=self.streams,
                ready=lambda: self.ready,
            )
        hops = [s.pipeline.hop for s in self.streams] or [1]
        self.progress = ProgressWatchdog(
            self.cfg.health.stall_after_s, samples_per_window=min(hops)
        )

    def attach_reporter(self, reporter: Reporting) -> None:
        """The reporter's outbox is open: the last readiness condition. Also subscribes the
        updater to its announcements (fleet group and device)."""
        self.reporter = reporter
        self.relay.attach(reporter)
        self.ota.publish = self.relay.on_ota_state
        for flt, handler in self.ota.subscriptions():
            reporter.subscribe(flt, handler)
        self.gate.mark(Readiness.OUTBOX_OPEN)

    def supervise_thread(
        self, name: str, alive: Callable[[], bool], restart: Callable[[], None]
    ) -> None:
        """Watch a thread started elsewhere (e.g. the metrics server)."""
        self.supervisor.add(name, watch(alive, name), on_restart=restart)

    def families(self) -> dict[str, str]:
        """Each stream's model family (for the fleet state)."""
        return {s.name: s.pipeline.model.card.family for s in self.streams}

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

    def _on_progress(self) -> None:
        lim = self.limits.max_windows
        if lim is None:
            return  # (the sum below is over every stream, after every block: 64 streams
            # at max speed spent 1.4% of their CPU on it)
        done = self.windows_total()
        if done >= lim:
            # a block yields several windows at once: say how many, as the summary does
            self.request_stop(f"{done} windows scored (--max-windows {lim})")

    def _windows_left(self) -> int | None:
        lim = self.limits.max_windows
        return None if lim is None else max(0, lim - self.windows_total())

    def _register_components(self) -> None:
        sinks = StreamSinks(
            self.relay.on_event, self.relay.on_health, self._on_progress, self._windows_left
        )
        # Streams run in turns on the supervisor's few workers: threads grow with the
        # CPUs and the models (their schedulers), not with the streams.
        for s in self.streams:
            self.supervisor.add_stepped(
                f"stream-{s.name}",
                s.bind(sinks),
                on_restart=s.restart_source,
                on_give_up=lambda s=s: s.give_up(  # type: ignore[misc]
                    "scoring stopped: restart budget spent (see supervisor in status)"
                ),
                on_retry=s.revive,
            )
        rep = self.reporter
        if rep is not None:
            self.supervisor.add(
                "reporting",
                watch(lambda: not rep.dead_threads(), "reporting"),
                on_restart=rep.restart_dead_threads,
            )
            # The outbox writer: a storage write that blocks (not one that fails: that is
            # a fault, retried from memory) makes it `hung` and withholds WATCHDOG=1.
            self.supervisor.add(
                "outbox",
                watch(
                    lambda: rep.outbox_writer()[0],
                    "outbox writer",
                    busy=lambda: rep.outbox_writer()[1],
                ),
            )
        if self.serving is not None:
            self.supervisor.add("serving", self.serving.run)
        up = self.ota.updater
        if up is not None:
            self.supervisor.add(
                "updater", watch(lambda: up.alive, "OTA updater"), on_restart=up.start
            )

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
        """Start everything and block until stopped, a limit is reached or every source
        reached the end of its data. Only a stop request ends this loop."""
        if self.reporter is not None:
            self.reporter.start()
        if self.ota.updater is not None:
            self.ota.updater.start()
        self._register_components()
        self.supervisor.start()
        now = time.monotonic()
        deadline = now + self.limits.duration_s if self.limits.duration_s else None
        next_telemetry = now + self.cfg.mqtt.telemetry_interval_s
        next_wd = now
        tick = min(TICK_S, self.wd_interval) if self.wd_interval else TICK_S
        announced_ready = False
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    self.request_stop(f"duration {self.limits.duration_s:g} s reached")
                    break
                self._check_live(now)
                line = ""
                try:
                    self.supervisor.faults.check("tick", self.stop_event)
                    if now >= next_telemetry:
                        next_telemetry = now + self.cfg.mqtt.telemetry_interval_s
                        self.relay.send_telemetry(self.streams)
                    line = self._tick_body()
                except Exception as e:  # noqa: BLE001 - the tick must outlive its bugs
                    self._tick.failed(e, self.errors)
                # READY and STATUS= do not depend on the tick body succeeding
                if self.gate.ready and not announced_ready:
                    announced_ready = True
                    self.notifier.ready(line or "ready")
                    log.info("ready: %s", line, extra=fields(message_id=MSG_AGENT_READY))
                elif line:
                    self.notifier.status(line if self.gate.ready else self.gate.describe())
                if self.wd_interval is not None and now >= next_wd and self._live.ok:
                    next_wd = now + self.wd_interval
                    self.notifier.watchdog()
                self._wake.wait(tick)
                self._wake.clear()
        except BaseException as e:
            self.stop_reason = self.stop_reason or f"error: {type(e).__name__}: {e}"
            raise
        finally:
            self.shutdown()

    def _tick_body(self) -> str:
        """Status file and rollback requests; returns the one-line summary for STATUS=."""
        names = [f"stream-{s.name}" for s in self.streams]
        if self.supervisor.all_finished(names):
            self.request_stop("all sources finished")
            return ""
        self.ota.poll_manual_rollback(self.streams, self._profile())
        snap = self.write_status()
        now = time.time()
        a = assess_own(snap, now)  # once for both: ~1 ms with 16 streams
        if self.device_state is not None:
            self.device_state.tick(snap, now, a)
        return summary_line(snap, now, a)

    def _profile(self) -> Profile:
        assert self.selection is not None
        return self.selection.profile

    def _check_live(self, now: float) -> None:
        """Liveness (WATCHDOG=1) from the loops' heartbeats; logged once per change."""
        was = self._live
        self.supervisor.tend(now)  # a stream stuck in a call must not hold the others up
        self._live = liveness(self.supervisor.hung(now))
        if was.ok and not self._live.ok:
            log.error(
                "withholding watchdog: %s",
                self._live.reason,
                extra=fields(message_id=MSG_WATCHDOG_STALL),
            )
        elif self._live.ok and not was.ok:
            log.warning("every loop turns again, watchdog resumed")

    def _data_hint(self, now: float) -> StallCheck:
        """Data progress, for status only: a silent sensor is DEGRADED, not a hang."""
        expecting = any(not s.runner.done for s in self.streams)
        was_ok = self.progress.last.ok
        chk = self.progress.check(
            self.samples_total(), self.windows_total(), now, expecting_data=expecting
        )
        if was_ok and not chk.ok:
            log.warning("data: %s (sensor health condition, the agent keeps running)", chk.reason)
        return chk

    # -- stopping --------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop everything within SHUTDOWN_S: loops and sources in parallel, then the
        reporter with a bounded grace for the outbox to drain. Nothing writes to the
        outbox after the reporter closed it."""
        end = time.monotonic() + SHUTDOWN_S
        self.stop_event.set()
        self.notifier.stopping(f"stopping: {self.stop_reason or 'requested'}")
        log.info("stopping: %s", self.stop_reason, extra=fields(message_id=MSG_AGENT_STOPPING))
        loops_end = end - (REPORTER_RESERVE_S if self.reporter is not None else 1.0)
        stops: list[Callable[[float], None]] = [s.stop_source for s in self.streams]
        if self.ota.updater is not None:
            stops.append(self.ota.updater.stop)
        stop_in_parallel(stops, loops_end)
        left = self.supervisor.join(loops_end)
        if self.serving is not None:
            self.serving.close()
        if left:
            log.error("still running at the stop deadline (abandoned): %s", ", ".join(left))
        if self.reporter is not None:
            self.relay.send_telemetry(self.streams)
            self._drain_grace(min(end - 3.0, time.monotonic() + DRAIN_GRACE_S))
            self.relay.close(timeout=1.0)
            try:
                self.reporter.stop(max(0.5, end - 1.0 - time.monotonic()))
            except Exception as e:  # the final status must still be written
                log.exception("reporting did not stop cleanly")
                self.errors.record("reporting", f"{type(e).__name__}: {e}")
        self.history.close(timeout=1.0)  # writes the events still queued
        self.write_status(running=False, wait_s=max(0.5, end - time.monotonic()))
        if self._lock is not None:
            self._lock.release()

    def _drain_grace(self, until: float) -> None:
        """While the broker is connected, give the backlog a moment to go out."""
        assert self.reporter is not None
        while time.monotonic() < until:
            snap = self.reporter.snapshot()
            connected = bool((snap.get("mqtt") or {}).get("connected"))
            depth = int((snap.get("outbox") or {}).get("depth") or 0)
            if not connected or depth == 0:
                return
            time.sleep(0.1)

    # -- status --------------------------------------------------------------------
    def components(self, *, running: bool = True) -> list[ComponentStatus]:
        return [*self.supervisor.statuses(), self._tick.status(running=running)]

    def snapshot(self, *, running: bool = True) -> dict[str, Any]:
        for s in self.streams:
            if s.runner.last_error:
                self.errors.record(f"source {s.name}", s.runner.last_error)
        now = time.monotonic()
        data = self._data_hint(now) if running else StallCheck(True)
        hints = [h for h in (self._live.reason, data.reason) if h]
        sel = self.selection
        health = HealthSection(
            live=running and self._live.ok,
            ready=self.gate.ready and running,
            hints=tuple(hints),
            watchdog=self.wd_interval is not None,
            notify=self.notifier.via,
        )
        return build_snapshot(
            SnapshotParts(
                device_id=self.cfg.device_id,
                started_at=self.started_at,
                running=running,
                stop_reason=self.stop_reason,
                profile={"name": sel.profile.name, "reason": sel.reason} if sel else None,
                health=health,
                streams=self.streams,
                components=self.components(running=running),
                events_total=self.relay.events_total,
                sensor_events_total=self.relay.sensor_events_total,
                windows_total=self.windows_total(),
                errors=self.errors.items(),
                ota=self.ota.snapshot(),
                reporting=self.reporter.snapshot() if self.reporter is not None else None,
            )
        )

    def write_status(self, *, running: bool = True, wait_s: float = 1.0) -> dict[str, Any]:
        """Build the snapshot and write status.json (waiting `wait_s` at most for the
        write, and not at all while an earlier write is stuck on a hung disk)."""
        snap = self.snapshot(running=running)
        self._status_file.write(snap, durable=not running, wait_s=wait_s)
        if self.on_status is not None:
            self.on_status(snap)
        for fn in self.status_listeners:
            fn(snap)
        return snap

    def _status_written(self, e: Exception | None) -> None:
        """The status writer's result (its thread)."""
        if e is not None:  # a full disk must not stop scoring; said once, not each second
            if not self._status_unwritable:
                log.warning("cannot write status: %s", e)
                self.errors.record("status", f"cannot write {STATUS_FILE}: {e}")
            self._status_unwritable = True
        else:
            if self._status_unwritable:
                log.warning("status written again")
            self._status_unwritable = False


def _refuse_foreign_state_dir_as_root(state_dir: Path) -> None:
    """Root running the agent on the agent user's state dir would leave root-owned
    files (outbox, status, slots) that the service, back under its own user, cannot use."""
    if os.geteuid() != 0:
        return
    owner = state_dir.stat().st_uid
    if owner != 0:
        import pwd

        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        raise StateError(
            f"state dir {state_dir} belongs to user {name}: run the agent as that user "
            f"(sudo -u {name} edge-agent run ...), not as root, or it would leave files "
            "that user cannot use"
        )
