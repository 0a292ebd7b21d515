"""Health decisions, pure (time passed in): data progress, readiness, liveness.

Three separate questions, on purpose (systemd's meaning of each, docs/status.md):

- readiness (READY=1): config validated, models loaded and warmed, outbox open. Not
  "a first sample arrived": an absent sensor must not hold the service in "activating";
- liveness (WATCHDOG=1): every supervised loop of the agent turns (`liveness()` over
  the supervisor's heartbeats). A hung backend call, a dead loop or a wedged outbox
  write stops the pings; a quiet plant does not;
- data progress (`ProgressWatchdog`): samples arrive and windows get scored. A silent
  or absent sensor is a sensor-health condition: status DEGRADED with the reason,
  never a withheld watchdog (a restart cannot bring a sensor back).

Typical wiring in the agent loop::

    gate.mark(Readiness.CONFIG_VALIDATED)        # after load_config
    notifier.extend_timeout(60) before each model load
    gate.mark(Readiness.MODELS_WARMED); ...; gate.mark(Readiness.OUTBOX_OPEN)
    if gate.ready and not sent: notifier.ready(summary)
    every tick: hints = [wd.check(samples, windows, now).reason]  -> status
    every watchdog_interval(): if liveness(supervisor.hung()).ok: notifier.watchdog()
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge_agent.service.sdnotify import Notifier, TimeoutExtender, watchdog_interval

__all__ = [
    "Notifier",
    "ProgressWatchdog",
    "Readiness",
    "ReadinessGate",
    "StallCheck",
    "TimeoutExtender",
    "liveness",
    "watchdog_interval",
]


@dataclass(frozen=True)
class StallCheck:
    """Outcome of one watchdog decision; `reason` is empty when healthy."""

    ok: bool
    reason: str = ""


class HungLoop(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def heartbeat_age_s(self) -> float | None: ...


def liveness(hung: Sequence[HungLoop]) -> StallCheck:
    """WATCHDOG=1 may go out unless a supervised loop stopped turning (`hung`)."""
    if not hung:
        return StallCheck(True)
    parts = [f"{h.name} has not turned for {h.heartbeat_age_s or 0:.0f} s" for h in hung]
    return StallCheck(False, "hung: " + ", ".join(parts))


class ProgressWatchdog:
    """Data progress: whether data flows *and* is scored (a status hint, not liveness).

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
    OUTBOX_OPEN = "outbox"


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
        """One line for STATUS= while starting, e.g. 'starting: waiting for model warm-up'."""
        if self.ready:
            return "ready"
        return "starting: waiting for " + ", ".join(c.value for c in self.missing)
