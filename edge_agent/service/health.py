"""Health decisions, pure (time passed in): watchdog progress, readiness, liveness.

The agent feeds counters in and sends what these objects decide through
`edge_agent.service.sdnotify.Notifier` (re-exported here for convenience). Liveness
("the pipeline moves") and readiness ("it is fit to serve") are separate on
purpose: a live agent may be not ready (still loading), a ready one may stall.

Typical wiring in the agent loop::

    wd = ProgressWatchdog(cfg.health.stall_after_s, samples_per_window=hop)
    gate = ReadinessGate()
    ...
    gate.mark(Readiness.CONFIG_VALIDATED)        # after load_config
    with notifier.extending(60): warm_up()       # slow model loads
    gate.mark(Readiness.MODELS_WARMED)
    ...on the first block: gate.mark(Readiness.FIRST_SAMPLE)
    if gate.ready and not sent: notifier.ready(summary)
    every watchdog_interval(): if wd.should_ping(samples, windows, now): notifier.watchdog()
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edge_agent.service.sdnotify import Notifier, TimeoutExtender, watchdog_interval

__all__ = [
    "Notifier",
    "ProgressWatchdog",
    "Readiness",
    "ReadinessGate",
    "StallCheck",
    "TimeoutExtender",
    "watchdog_interval",
]


@dataclass(frozen=True)
class StallCheck:
    """Outcome of one watchdog decision; `reason` is empty when healthy."""

    ok: bool
    reason: str = ""


class ProgressWatchdog:
    """Decides whether WATCHDOG=1 may be sent: only while data flows *and* is scored.

    - no new samples for `stall_after_s` -> stalled source;
    - samples arrive but no window was scored for `stall_after_s`, although at least
      `samples_per_window` samples came in since the last scored window -> hung
      inference (the tolerance keeps slow sensors, which fill a window in minutes,
      from being taken for hangs);
    - `expecting_data=False` (every source finished on purpose, e.g. a replay file
      at its end) -> liveness only, pings continue.

    Counters are totals since start (monotonic); time is any monotonic clock in
    seconds. The first call sets the baseline and counts as progress.
    """

    def __init__(self, stall_after_s: float, *, samples_per_window: int = 1) -> None:
        if stall_after_s <= 0:
            raise ValueError("stall_after_s must be positive")
        if samples_per_window < 1:
            raise ValueError("samples_per_window must be >= 1")
        self.stall_after_s = stall_after_s
        self.samples_per_window = samples_per_window
        self._samples = -1
        self._windows = -1
        self._samples_at: float = 0.0
        self._windows_at: float = 0.0
        self._samples_at_last_window = 0
        self.last = StallCheck(True)

    def check(
        self, samples: int, windows: int, now: float, *, expecting_data: bool = True
    ) -> StallCheck:
        if self._samples < 0:
            self._samples, self._windows = samples, windows
            self._samples_at = self._windows_at = now
            self._samples_at_last_window = samples
        if samples > self._samples:
            self._samples, self._samples_at = samples, now
        if windows > self._windows:
            self._windows, self._windows_at = windows, now
            self._samples_at_last_window = samples
        if not expecting_data:
            self.last = StallCheck(True)
            return self.last
        idle = now - self._samples_at
        if idle > self.stall_after_s:
            self.last = StallCheck(False, f"no samples for {idle:.0f} s")
            return self.last
        unscored = samples - self._samples_at_last_window
        idle_w = now - self._windows_at
        if idle_w > self.stall_after_s and unscored >= self.samples_per_window:
            self.last = StallCheck(
                False, f"no window scored for {idle_w:.0f} s while {unscored} samples arrived"
            )
            return self.last
        self.last = StallCheck(True)
        return self.last

    def should_ping(
        self, samples: int, windows: int, now: float, *, expecting_data: bool = True
    ) -> bool:
        return self.check(samples, windows, now, expecting_data=expecting_data).ok


class Readiness(str, enum.Enum):
    """Conditions that must all hold before READY=1 (in the order they usually come)."""

    CONFIG_VALIDATED = "config validation"
    MODELS_WARMED = "model warm-up"
    FIRST_SAMPLE = "first sample"


class ReadinessGate:
    """READY=1 gating. Once ready it stays ready: readiness lost later is reported
    as degraded through status, not by taking READY back (systemd cannot)."""

    def __init__(self) -> None:
        self._met: set[Readiness] = set()

    def mark(self, cond: Readiness) -> None:
        self._met.add(cond)

    @property
    def ready(self) -> bool:
        return len(self._met) == len(Readiness)

    @property
    def missing(self) -> tuple[Readiness, ...]:
        return tuple(c for c in Readiness if c not in self._met)

    def describe(self) -> str:
        """One line for STATUS= while starting, e.g. 'starting: waiting for first sample'."""
        if self.ready:
            return "ready"
        return "starting: waiting for " + ", ".join(c.value for c in self.missing)
