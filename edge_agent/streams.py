"""Building a running stream from its config: source + runner + model + pipeline.

The I/O-facing half of a stream (thread, source, model files); the pure half is
`pipeline/stream.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.backoff import RestartBudget
from edge_agent.config import AgentConfig, StreamConfig
from edge_agent.errors import CalibrationError, ConfigError, SourceError
from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.baseline_follower import BaselineFollower
from edge_agent.pipeline.calibration import (
    Calibration,
    Calibrator,
    apply_calibration,
    carried_note,
    fit_calibration,
    load_for_model,
    not_applied_note,
    save_calibration,
    threshold_warning,
)
from edge_agent.pipeline.live_calibration import LiveCalibration
from edge_agent.pipeline.sensor_health import HealthEvent, SensorHealthMonitor
from edge_agent.pipeline.stream import AnomalyEvent, StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.card import Preprocessing
from edge_agent.runtime.model import LoadedModel, load_model, resolve_model_dir
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import Priority, SchedulerSet
from edge_agent.service.supervisor import Loop
from edge_agent.service.turns import YIELD
from edge_agent.sources.base import Block, Source
from edge_agent.sources.registry import create_source
from edge_agent.sources.runner import SourceRunner, SourceState

__all__ = [
    "EventSink",
    "HealthSink",
    "ModelLoader",
    "StreamRuntime",
    "StreamSinks",
    "build_policy",
    "source_connected",
]

log = logging.getLogger(__name__)

EventSink = Callable[[AnomalyEvent], None]
HealthSink = Callable[[HealthEvent], None]
# (bundled model dir, profile, stream name) -> the model the stream serves
ModelLoader = Callable[[Path, Profile, str], LoadedModel]
GET_TIMEOUT_S = 0.25


def source_connected(state: SourceState) -> bool | None:
    """What a runner's state says about its device: True running, False reconnecting,
    None otherwise (starting, stopped, finished, failed: a stop is not a reconnect)."""
    if state is SourceState.RUNNING:
        return True
    if state is SourceState.RECONNECTING:
        return False
    return None


@dataclass(frozen=True)
class StreamSinks:
    """Where a serving stream sends what it finds (called on the stream's thread)."""

    event: EventSink
    health: HealthSink
    progress: Callable[[], None]  # after each scored block
    # windows still wanted by a run bounded by a number of windows (--max-windows), else
    # None: a backlog is then handed over in no bigger a block than those need
    windows_left: Callable[[], int | None] = lambda: None


@dataclass(frozen=True)
class Telemetry:
    interval_s: float
    windows: int
    score_mean: float | None
    score_max: float | None
    alarms: int
    drops: int  # blocks dropped by the bounded queue + windows not scored (bad samples)


def check_source_fits(
    source: Source, pre: Preprocessing, where: str, stream: str, model_name: str
) -> None:
    """ConfigError unless the source's samples have the shape the model's card takes,
    or when the source cannot say (a replay file that cannot be read)."""
    try:
        fits = len(source.channels) == len(pre.channels) and source.columns == pre.columns
    except SourceError as e:  # name the stream: a config may have several
        raise ConfigError(f"{where}: streams {stream!r}: source: {e}") from e
    if fits:
        return
    want = f"{len(pre.channels)} {list(pre.channels)}"
    if pre.frame is not None:
        h, w = pre.frame
        want += f" ({pre.columns} values: a {h}x{w} grayscale frame; set the camera's "
        want += f"height = {h}, width = {w})"
    got = f"{len(source.channels)} channels {list(source.channels)}"
    if source.columns != len(source.channels):
        got += f" ({source.columns} values per sample)"
    raise ConfigError(
        f"{where}: streams {stream!r}: source gives {got}, model {model_name} expects {want}"
    )


def with_calibration(
    state_dir: Path, sc: StreamConfig, model: LoadedModel
) -> tuple[LoadedModel, Calibration | None, AlarmPolicy]:
    """The stream's model with its stored calibration applied (if one was fitted on this
    very model), the calibration, and the alarm policy they give."""
    cal = load_for_model(state_dir, sc.name, model.card)
    if cal is not None:
        model = apply_calibration(model, cal)
    return model, cal, build_policy(sc, model, cal)


def build_policy(
    sc: StreamConfig, model: LoadedModel, calibration: Calibration | None = None
) -> AlarmPolicy:
    """Config values override the calibration's threshold, which overrides the card's;
    zero means "not set here"."""
    card, a = model.card, sc.alarm
    return AlarmPolicy(
        a.threshold or (calibration.threshold if calibration else 0.0) or card.threshold,
        min_on=a.min_on or card.alarm.min_on,
        min_off=a.min_off or card.alarm.min_off,
        hysteresis=a.hysteresis or card.alarm.hysteresis,
    )


class StreamRuntime:
    def __init__(
        self,
        sc: StreamConfig,
        cfg: AgentConfig,
        profile: Profile,
        models_dir: Path | None,
        *,
        loader: ModelLoader | None = None,
        pool: ModelPool | None = None,
        schedulers: SchedulerSet | None = None,
    ) -> None:
        self.config = sc
        # The bundled model; `loader` may serve another one (e.g. an OTA slot's) instead.
        self.bundled_dir = resolve_model_dir(
            sc.model, sc.variant, profile, models_dir, Path(cfg.state_dir)
        )
        # With a pool, every stream of one variant shares one loaded instance, charged
        # once against the profile's model memory budget (the pool uses its own loader).
        self.pool = pool
        if pool is not None:
            model = pool.acquire(self.bundled_dir, sc.name)
        elif loader is not None:
            model = loader(self.bundled_dir, profile, sc.name)
        else:
            model = load_model(self.bundled_dir, profile)
        pre = model.card.preprocessing
        self.state_dir = Path(cfg.state_dir)
        model, self.calibration, policy = with_calibration(self.state_dir, sc, model)
        if self.calibration is not None:
            log.info(
                "stream %s: calibration of %s applied (threshold %.4g)",
                sc.name,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(self.calibration.created)),
                self.calibration.threshold,
            )
        spec = sc.source.with_default_channels(pre.channels)  # channels left out: the card's
        self.source = create_source(spec.kind, sc.name, spec.options)
        check_source_fits(self.source, pre, cfg.source_file or "config", sc.name, model.card.name)
        self._budget_args = (cfg.health.restart_budget, cfg.health.restart_window_s)
        self._source_budget = RestartBudget(*self._budget_args)
        self._hop = sc.hop or pre.hop
        self._waker: Callable[[], None] | None = None  # see set_waker
        self._sinks: StreamSinks | None = None  # see bind
        self._yielded = False  # the last turn said YIELD (see step)
        self.runner = self._new_runner()
        self._runner_started = False
        self.pipeline = StreamPipeline(
            sc.name,
            model,
            policy,
            window=sc.window or pre.window,
            hop=sc.hop or pre.hop,
            max_batch=sc.max_batch,
        )
        # Windows go to the serving model's scheduler, batched with other streams'.
        self.schedulers = schedulers
        if schedulers is not None:
            sched = schedulers.for_model(model)
            if sched is not None:
                sched.attach()
            self.pipeline.scorer = self._score_windows
        self.health = SensorHealthMonitor(
            sc.name,
            tuple(self.source.channels),
            self.source.nominal_rate_hz,
            sc.sensor_health,
            time.time(),
        )
        self.baseline: BaselineFollower | None = None
        if sc.baseline.mode == "adaptive":
            self.baseline = BaselineFollower(self.state_dir, sc.name, sc.baseline, self.pipeline)
        self.calibrator: Calibrator | None = None
        self.calibration_error = ""
        # an operator's calibration of the running stream (remote `calibrate`): it
        # copies samples aside while the stream keeps scoring
        self.live = LiveCalibration()
        # For status: carried over from an older model, or why a stored calibration is
        # not applied; an OTA update keeps it (and `calibration`) to what serves.
        self.calibration_note = (
            carried_note(self.calibration, model.card)
            if self.calibration is not None
            else not_applied_note(self.state_dir, sc.name, model.card)
        )
        if sc.calibrate_windows > 0 and self.calibration is None:
            p = self.pipeline
            self.calibrator = Calibrator(p.window, p.hop, sc.calibrate_windows, pre.columns)
        self.error = ""  # why the stream stopped for good (its restart budget is spent)
        self._tel_at = time.monotonic()
        self._tel_drops = 0

    @property
    def name(self) -> str:
        return self.config.name

    def _score_windows(
        self, model: LoadedModel, x: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float64]:
        """The pipeline's scorer: through the model's scheduler when it has one (a model
        the pool loaded); in this thread otherwise (e.g. an OTA candidate)."""
        assert self.schedulers is not None
        sched = self.schedulers.for_model(model)
        if sched is None:
            return model.scores_normalized(x)
        return sched.score(model, x, priority=Priority.REALTIME)

    def _new_runner(self) -> SourceRunner:
        r = SourceRunner(
            self.source,
            max_blocks=self.config.queue_blocks,
            budget=self._source_budget,
            merge_below=self._hop,  # tiny blocks travel as one hop
            # an adaptive baseline learns between blocks: a backlog keeps its blocks
            merge_backlog=self.config.baseline.mode != "adaptive",
        )
        r.set_waker(self._waker)
        return r

    def set_waker(self, wake: Callable[[], None]) -> None:
        """Who to call when the source has samples for the next turn (the supervisor's
        turn pool; kept for the runners of restarts)."""
        self._waker = wake
        self.runner.set_waker(wake)

    def bind(self, sinks: StreamSinks) -> StreamRuntime:
        """Where `step` sends what it finds; returns self (for Supervisor.add_stepped)."""
        self._sinks = sinks
        return self

    def serve(self, loop: Loop, sinks: StreamSinks) -> None:
        """The stream run on a thread of its own (tests, tools): `step` in a loop, waiting
        between turns for its source. Returns when the data ended or the agent stops;
        raises what `step` raises."""
        woken = threading.Event()
        self.bind(sinks).set_waker(woken.set)
        while not loop.stop.is_set():
            woken.clear()
            nxt = self.step(loop)
            if nxt is None:
                return
            if nxt > 0:
                woken.wait(nxt)

    def step(self, loop: Loop) -> float | None:
        """One turn of the stream: take what its source queued, watch sensor health,
        score, emit (to the sinks given to `bind`). Never waits for the source: returns
        when it wants its next turn (see service/turns.py: YIELD when the source runs
        ahead, 0.0 when more is ready, else GET_TIMEOUT_S at the latest: the silence of
        a sensor is a turn too), or None at the end of the data (the only way a stream
        finishes) or when the agent stops. Raises when the source failed past its own
        budget or its thread died, so the supervisor restarts the stream with a fresh
        source runner.
        """
        sinks, stop = self._sinks, loop.stop
        assert sinks is not None, "bind() the stream's sinks first"
        if stop.is_set():
            return None
        if not self._runner_started:
            self._runner_started = True
            self.runner.start()
        loop.beat()
        if self.runner.pulling and not self._yielded:
            # a source read in the turn (max speed) woke this one as a live turn (its
            # open, a timer): it takes its turns with the other max-speed ones, one at a
            # time (two at once, each bounded by the windows then left, doubled a
            # --max-windows run's last turn)
            self._yielded = True
            return YIELD
        got = self._turn(sinks, stop)
        nxt = None if stop.is_set() else self._next_turn(got)
        self._yielded = nxt == YIELD
        return nxt

    def _turn(self, sinks: StreamSinks, stop: threading.Event) -> bool:
        """Take what the source has, watch sensor health, score, emit; True when blocks
        were taken."""
        runner = self.runner
        # up to the end of the next window: tiny blocks arrive as one hand-over
        need = self.pipeline.windower.samples_to_next_window()
        left = sinks.windows_left()
        most = None if left is None else need + max(0, left - 1) * self.pipeline.hop
        blocks = runner.get(0.0, need, most)
        now = time.time()
        connected = source_connected(runner.state)
        hevents = [] if connected is None else self.health.set_connected(connected, now)
        self.health.set_rate(self.source.nominal_rate_hz, now)  # a camera's, once open
        hevents += self._score(blocks, sinks, now, stop)
        if not runner.done:
            hevents += self.health.check(now)
        for h in hevents:
            sinks.health(h)
        return bool(blocks)

    def _next_turn(self, got: bool) -> float | None:
        """When the next turn is wanted (see step); raises for a source that failed."""
        runner = self.runner
        if got:
            if runner.pulling:
                return YIELD  # at max speed: after the turns that are ready now
        else:
            if runner.state is SourceState.FINISHED:
                return None
            if runner.state is SourceState.FAILED:
                raise SourceError(f"source {self.name}: {runner.last_error}")
            if not runner.alive:
                raise SourceError(f"source {self.name}: reader thread ended unexpectedly")
            if runner.pulling:
                return GET_TIMEOUT_S  # read in the turn and nothing came: not at once again
        # the next turn when the next window's samples are in (0: they came meanwhile)
        need = self.pipeline.windower.samples_to_next_window()
        return 0.0 if runner.arm(need) else GET_TIMEOUT_S

    def _score(
        self, blocks: list[Block], sinks: StreamSinks, now: float, stop: threading.Event
    ) -> list[HealthEvent]:
        hevents: list[HealthEvent] = []
        for b in blocks:
            hev, bad = self.health.observe(b, now)
            hevents += hev
            if self.calibrator is not None:
                b = self._calibrate(b, now)  # noqa: PLW2901 - the rest, if any
                if not len(b.samples):
                    sinks.progress()
                    continue
                bad = bad[-len(b.samples) :]
            self.live.feed(b.samples)
            # Samples from a faulty sensor are withheld: not a process anomaly.
            for ev in self.pipeline.process(b, bad if bad.any() else None):
                sinks.event(ev)
            if self.baseline is not None:
                self.baseline.after_block(b)
            sinks.progress()
            if stop.is_set():  # e.g. --max-windows reached: do not run ahead
                break
        return hevents

    def restart_source(self) -> None:
        """Before a restart of the stream: a source runner that ended gets a fresh one."""
        if self.runner.alive:
            return
        self.runner.stop(timeout=0.5)
        self.runner = self._new_runner()
        self._runner_started = True
        self.runner.start()
        log.info("stream %s: source reader started again", self.name)

    def give_up(self, why: str) -> None:
        """The stream is down (restart budget spent): its source must not keep running.
        Its model stays pinned: the supervisor tries the stream again later."""
        self.error = why
        self.live.abandon(time.time(), f"the stream stopped: {why}")
        self.runner.stop(timeout=2.0)

    def revive(self) -> None:
        """Before the supervisor tries a stream that gave up again: a fresh source, with
        a fresh restart budget of its own (as the stream gets)."""
        self.error = ""
        self._source_budget = RestartBudget(*self._budget_args)
        self.restart_source()

    def _calibrate(self, b: Block, now: float) -> Block:
        """Feed the automatic calibration; returns the part of `b` it did not need."""
        assert self.calibrator is not None
        cal = self.calibrator
        k = cal.add(b.samples)
        if not cal.done:
            return b.tail(len(b.samples))
        self.calibrator = None
        model = self.pipeline.model
        try:
            c = fit_calibration(
                model,
                cal.samples(),
                stream=self.name,
                now=now,
                window=self.pipeline.window,
                hop=self.pipeline.hop,
            )
            save_calibration(self.state_dir, c)
        except CalibrationError as e:
            # Bad calibration data must not stop monitoring: keep the card's values.
            self.calibration_error = str(e)
            log.error("stream %s: automatic calibration failed: %s", self.name, e)
        else:
            self.calibration, self.calibration_note = c, ""
            self.pipeline.swap_model(
                apply_calibration(model, c), build_policy(self.config, model, c)
            )
            log.info(
                "stream %s: calibrated on %d samples, threshold %.4g (card %.4g)",
                self.name,
                c.n_samples,
                c.threshold,
                model.card.threshold,
            )
            warning = threshold_warning(c, model.card)
            if warning:
                log.warning("stream %s: automatic calibration: %s", self.name, warning)
        return b.tail(k)  # its samples' times and sequence kept

    def calibration_snapshot(self) -> dict[str, Any]:
        live = self.live.snapshot()
        return {**self._calibration_applied(), **({"live": live} if live else {})}

    def _calibration_applied(self) -> dict[str, Any]:
        if self.calibrator is not None:
            c = self.calibrator
            return {"state": "calibrating", "collected": c.collected, "needed": c.needed}
        note = {"note": self.calibration_note} if self.calibration_note else {}
        if self.calibration is not None:
            return {"state": "calibrated", **self.calibration.summary(), **note}
        return {
            "state": "failed" if self.calibration_error else "none",
            "error": self.calibration_error,
            **note,
        }

    def take_telemetry(self) -> Telemetry:
        now = time.monotonic()
        iv = self.pipeline.take_interval()
        drops = self.runner.dropped_blocks + self.pipeline.stats.skipped_windows
        tel = Telemetry(
            interval_s=now - self._tel_at,
            windows=iv.windows,
            score_mean=iv.score_mean,
            score_max=iv.score_max,
            alarms=iv.alarms,
            drops=drops - self._tel_drops,
        )
        self._tel_at, self._tel_drops = now, drops
        return tel

    def model_version(self) -> int:
        return self.pipeline.model.card.version

    def stop_source(self, timeout: float) -> None:
        self.runner.stop(timeout)
        if self.baseline is not None:
            self.baseline.save()  # what it adapted to survives the restart

    def snapshot(self) -> dict[str, Any]:
        r, p, st = self.runner, self.pipeline, self.pipeline.stats
        m = p.model
        return {
            "name": self.name,
            "source_kind": self.config.source.kind,
            "source_state": r.state.value,
            "source_error": r.last_error,
            "rate_hz_configured": self.source.rate_hz,
            "rate_hz_measured": getattr(self.source, "measured_rate_hz", None),
            "disconnects": r.disconnects,
            "samples": r.samples_in,
            "windows": st.windows,
            "skipped_windows": st.skipped_windows,
            "dropped_blocks": r.dropped_blocks,
            "gaps": p.windower.gaps,
            "last_score": st.last_score,
            "threshold": p.threshold,
            "alarm_open": p.policy.state.active,
            "alarms": st.alarms,
            "events": st.events,
            "nonfinite_scores": st.nonfinite_scores,
            "saturated_windows": st.saturated_windows,
            "restarts": r.restarts,
            "error": self.error,
            "model": {
                "name": m.card.name,
                "version": m.card.version,
                "backend": m.backend.key,
                "precision": m.card.precision,
                "providers": m.backend.providers,
                "fallback": m.backend.fallback,
                # per call of the shared model (all its streams), for the metrics endpoint
                "inference": m.backend.latency.snapshot().to_json(),
                "dir": str(m.card.directory),
            },
            "counters": self.source.snapshot_counters(),
            "calibration": self.calibration_snapshot(),
            "baseline": self.baseline.snapshot() if self.baseline else {"mode": "fixed"},
            "sensor_health": {
                "active": sorted(
                    f"{c.value}:{ch}" if ch else c.value for c, ch in self.health.active
                )
            },
        }
