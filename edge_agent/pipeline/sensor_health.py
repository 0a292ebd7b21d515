"""Sensor health, kept apart from process anomalies. Pure: blocks and times in, events out.

A broken sensor (unplugged, stalled, stuck, out of its physical range, sending NaN,
or at the wrong rate) must not be reported as an anomalous machine. The monitor
flags bad samples (`bad_mask`, which the pipeline does not score) and emits
start/end HealthEvents per (condition, channel). Per-sample conditions end only
after `clear_after_samples` clean samples in a row, so a sensor that drops one
NaN every few samples gives one long event, not a flood.

All checks are vectorised over the block (numpy), no per-sample Python loops.
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ConfigError
from edge_agent.pipeline.health_config import ChannelRange, SensorHealthConfig
from edge_agent.sources.base import Block

__all__ = [
    "ChannelRange",
    "HealthCondition",
    "HealthEvent",
    "SensorHealthConfig",
    "SensorHealthMonitor",
]

STREAM_LEVEL = ""  # HealthEvent.channel for conditions of the whole stream


class HealthCondition(str, enum.Enum):
    DISCONNECTED = "disconnected"  # the source is reconnecting (device or broker gone)
    STALLED = "stalled"  # no samples for stall_after_s
    STUCK = "stuck"  # the same value stuck_after_samples times in a row
    OUT_OF_RANGE = "out_of_range"  # outside the channel's physical min/max
    NON_FINITE = "non_finite"  # NaN or +-inf (invalid readings)
    RATE = "rate"  # measured rate off the configured rate by more than rate_tolerance
    GAP = "gap"  # a hole of at least gap_event_s in the data (reconnect, lost frames, time jump)


@dataclass(frozen=True)
class HealthEvent:
    stream: str
    channel: str  # "" for stream-level conditions (disconnected, stalled, rate, gap)
    condition: HealthCondition
    active: bool  # True = the condition started, False = it ended
    detail: str
    # Sample conditions and gaps: the source time of the sample that started or ended
    # them (a replay's events carry the file's times). Stalled, rate, disconnected:
    # the clock, since no sample exists to name.
    ts: float


_SAMPLE_CONDITIONS = (
    HealthCondition.NON_FINITE,
    HealthCondition.OUT_OF_RANGE,
    HealthCondition.STUCK,
)
_MAX_SEQ_GAP = 1_000_000  # samples between blocks still counted as delivered
_RATE_CLEAR = 0.8  # rate event ends inside 0.8 x tolerance: no flapping at the boundary


class SensorHealthMonitor:
    """One per stream. `rate_hz=None` disables the rate check (e.g. a replay at 10x)."""

    def __init__(
        self,
        stream: str,
        channels: tuple[str, ...],
        rate_hz: float | None,
        config: SensorHealthConfig,
        now: float,
    ) -> None:
        self.stream = stream
        self.channels = channels
        self.rate_hz = rate_hz
        self.cfg = config
        n_ch = len(channels)
        self._lo = np.full(n_ch, -np.inf)
        self._hi = np.full(n_ch, np.inf)
        for r in config.ranges:
            if r.channel not in channels:
                raise ConfigError(
                    f"stream {stream}: sensor_health.ranges names unknown channel "
                    f"{r.channel!r} (channels: {', '.join(channels)})"
                )
            i = channels.index(r.channel)
            self._lo[i], self._hi[i] = r.min, r.max
        self._active: dict[HealthCondition, npt.NDArray[np.bool_]] = {
            c: np.zeros(n_ch, bool) for c in _SAMPLE_CONDITIONS
        }
        # clean samples since the condition was last seen, per channel
        self._clean: dict[HealthCondition, npt.NDArray[np.int64]] = {
            c: np.zeros(n_ch, np.int64) for c in _SAMPLE_CONDITIONS
        }
        self._ranged = bool(config.ranges)
        self._sample_faults = False  # any per-sample condition in force
        self._prev: npt.NDArray[np.float32] | None = None
        self._run = np.zeros(n_ch, np.int64)  # equal-value run length ending at last sample
        self._started = now
        self._last_data = now
        self._arrivals: collections.deque[tuple[float, int]] = collections.deque()
        self._seq_end: int | None = None  # block.seq + n of the last block seen
        self._stalled = False
        self._rate_bad = False
        self._connected = True
        self._t_end: float | None = None  # source time of the last sample seen
        self._gap_clean: int | None = None  # samples since the last long hole; None = none

    @property
    def active(self) -> frozenset[tuple[HealthCondition, str]]:
        """Conditions now in force, for status: (condition, channel or "")."""
        out = {(c, self.channels[i]) for c, a in self._active.items() for i in np.flatnonzero(a)}
        for c, on in (
            (HealthCondition.STALLED, self._stalled),
            (HealthCondition.RATE, self._rate_bad),
            (HealthCondition.DISCONNECTED, not self._connected),
            (HealthCondition.GAP, self._gap_clean is not None),
        ):
            if on:
                out.add((c, STREAM_LEVEL))
        return frozenset(out)

    def observe(self, block: Block, now: float) -> tuple[list[HealthEvent], npt.NDArray[np.bool_]]:
        """Events started/ended by this block, and which of its samples are not scorable."""
        x = self._per_channel(block.samples)
        n = len(x)
        events: list[HealthEvent] = []
        if self._stalled:
            self._stalled = False
            events.append(self._event("", HealthCondition.STALLED, False, "data resumed", now))
        self._last_data = now
        events.extend(self._hole(block, n, now))
        self._arrivals.append((now, self._delivered(block, n)))
        self._prune(now)
        if n == 0:
            return events, np.zeros(0, bool)
        if self._quiet(x):
            return events, np.zeros(n, bool)
        finite = np.isfinite(x)
        flags = {
            HealthCondition.NON_FINITE: ~finite,
            HealthCondition.OUT_OF_RANGE: finite & ((x < self._lo) | (x > self._hi)),
            HealthCondition.STUCK: self._stuck(x, finite),
        }
        for cond, f in flags.items():
            events.extend(self._transitions(cond, f, x, block))
        bad = flags[HealthCondition.NON_FINITE] | flags[HealthCondition.OUT_OF_RANGE]
        bad |= flags[HealthCondition.STUCK]
        self._sample_faults = any(bool(a.any()) for a in self._active.values())
        return events, bad.any(axis=1)

    def _quiet(self, x: npt.NDArray[np.float32]) -> bool:
        """Nothing per sample to do for this block: no range or stuck check configured,
        no sample condition in force, every value finite (one BLAS call; a huge finite
        value that squares to inf just takes the full path). The usual block."""
        if self._sample_faults or self._ranged or self.cfg.stuck_after_samples > 0:
            return False
        flat = x.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            return math.isfinite(float(np.dot(flat, flat)))

    def _per_channel(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """One value per channel and sample. A channel spanning several columns (a
        camera frame) is checked by its mean: NaN if any pixel is, out of range for a
        covered lens or a blown exposure, stuck for a frozen picture."""
        n_ch = len(self.channels)
        if x.ndim != 2 or x.shape[1] == n_ch or x.shape[1] % n_ch:
            return x
        m: npt.NDArray[np.float32] = x.reshape(len(x), n_ch, -1).mean(axis=2, dtype=np.float32)
        return m

    def _delivered(self, block: Block, n: int) -> int:
        """Samples the sensor produced up to this block, by sequence number: a block the
        agent dropped (queue full) or a frame the latest-frame policy replaced still
        counts, so an agent falling behind is not taken for a slow sensor."""
        prev, self._seq_end = self._seq_end, block.seq + n
        if prev is None:
            return n
        gap = block.seq - prev
        # a reconnect restarts the numbering; a huge jump is a seek, not a rate
        return n + gap if 0 <= gap <= _MAX_SEQ_GAP else n

    def _hole(self, block: Block, n: int, now: float) -> list[HealthEvent]:
        """`gap` starts at a hole of gap_event_s or more before this block (by the
        samples' own times) and ends after clear_after_samples samples without one.
        Samples numbered but not here (blocks the agent dropped, camera frames the
        latest-frame policy skipped) fill their share of the time: an agent falling
        behind is not a hole in the sensor's data."""
        skipped = 0 if self._seq_end is None else max(0, block.seq - self._seq_end)
        prev_end, hole_before = self._t_end, block.gap_before or skipped > 0
        if n:
            self._t_end = block.time_of(n - 1)
        if prev_end is None:
            return []
        limit = self.cfg.gap_event_s
        if hole_before and limit > 0:
            step = 1.0 / block.rate_hz if block.rate_hz > 0 else 0.0
            hole_s = block.t0 - prev_end - (skipped + 1) * step
            if hole_s >= limit:
                started = self._gap_clean is None
                self._gap_clean = 0
                if started:
                    detail = f"hole of {hole_s:.1f} s in the data"
                    # the first sample after the hole
                    return [self._event("", HealthCondition.GAP, True, detail, block.t0)]
                return []
        if self._gap_clean is None:
            return []
        self._gap_clean += n
        if self._gap_clean < self.cfg.clear_after_samples:
            return []
        self._gap_clean = None
        detail = f"{self.cfg.clear_after_samples} samples without a hole"
        return [self._event("", HealthCondition.GAP, False, detail, block.time_of(n - 1))]

    def set_rate(self, rate_hz: float | None, now: float) -> None:
        """The nominal rate may become known late (a camera reports it once open):
        measuring starts afresh from then."""
        if rate_hz == self.rate_hz:
            return
        self.rate_hz = rate_hz
        self._started = now
        self._arrivals.clear()

    def check(self, now: float) -> list[HealthEvent]:
        """Time-based conditions (stall, rate); call periodically, e.g. once a second."""
        events: list[HealthEvent] = []
        idle = now - self._last_data
        if not self._stalled and idle >= self.cfg.stall_after_s:
            self._stalled = True
            events.append(
                self._event("", HealthCondition.STALLED, True, f"no samples for {idle:.1f} s", now)
            )
        events.extend(self._check_rate(now))
        return events

    def set_connected(self, connected: bool, now: float) -> list[HealthEvent]:
        """Feed the runner's state (reconnecting = not connected); events on change."""
        if connected == self._connected:
            return []
        self._connected = connected
        if connected:  # the outage is not the sensor's rate: measure afresh from here
            self._started = now
            self._arrivals.clear()
        detail = "source reconnected" if connected else "source disconnected, reconnecting"
        return [self._event("", HealthCondition.DISCONNECTED, not connected, detail, now)]

    def _prune(self, now: float) -> None:
        while self._arrivals and self._arrivals[0][0] <= now - self.cfg.rate_window_s:
            self._arrivals.popleft()

    def _check_rate(self, now: float) -> list[HealthEvent]:
        win = self.cfg.rate_window_s
        self._prune(now)
        tol = self.cfg.rate_tolerance
        if (
            self.rate_hz is None
            or tol <= 0
            or now - self._started < win
            or self._stalled
            or not self._connected  # reported as disconnected, not as a slow sensor
        ):
            return []
        measured = sum(k for _, k in self._arrivals) / win
        off = abs(measured - self.rate_hz) / self.rate_hz
        detail = f"measured {measured:.1f} Hz, configured {self.rate_hz:.1f} Hz"
        if not self._rate_bad and off > tol:
            self._rate_bad = True
            return [self._event("", HealthCondition.RATE, True, detail, now)]
        if self._rate_bad and off <= tol * _RATE_CLEAR:
            self._rate_bad = False
            return [self._event("", HealthCondition.RATE, False, detail, now)]
        return []

    def _stuck(
        self, x: npt.NDArray[np.float32], finite: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.bool_]:
        limit = self.cfg.stuck_after_samples
        if limit <= 0:  # off (the default): no run lengths to keep
            return np.zeros(x.shape, bool)
        n = len(x)
        prev = self._prev
        self._prev = x[-1].copy()
        first = np.zeros((1, x.shape[1]), bool) if prev is None else x[:1] == prev
        eq = np.concatenate([first, x[1:] == x[:-1]]) & finite  # NaN never "stuck"
        idx = np.arange(n)[:, None]
        last_reset = np.maximum.accumulate(np.where(eq, -1, idx), axis=0)
        # no reset yet in this block: the run carries over from the previous block
        run = np.where(last_reset < 0, self._run + idx + 1, idx - last_reset + 1)
        self._run = run[-1].astype(np.int64)
        return run >= limit

    def _transitions(
        self,
        cond: HealthCondition,
        flags: npt.NDArray[np.bool_],
        x: npt.NDArray[np.float32],
        block: Block,
    ) -> list[HealthEvent]:
        n = len(flags)
        seen = flags.any(axis=0)
        # clean samples at the end of this block: n - 1 - index of last flagged sample
        last_idx = n - 1 - np.argmax(flags[::-1], axis=0)
        clean = np.where(seen, n - 1 - last_idx, self._clean[cond] + n)
        was = self._active[cond]
        starts = ~was & seen
        now_active = (was | seen) & (clean < self.cfg.clear_after_samples)
        ends = (was | seen) & ~now_active
        self._clean[cond] = clean
        self._active[cond] = now_active
        events = []
        for i in (int(j) for j in np.flatnonzero(starts | ends)):
            ch = self.channels[i]
            if starts[i]:
                first = int(np.argmax(flags[:, i]))  # the first bad sample
                detail = self._detail(cond, flags, x, i)
                events.append(self._event(ch, cond, True, detail, block.time_of(first)))
            if ends[i]:
                detail = f"{self.cfg.clear_after_samples} clean samples"
                events.append(self._event(ch, cond, False, detail, block.time_of(n - 1)))
        return events

    def _detail(
        self,
        cond: HealthCondition,
        flags: npt.NDArray[np.bool_],
        x: npt.NDArray[np.float32],
        i: int,
    ) -> str:
        k = int(flags[:, i].sum())
        v = float(x[int(np.argmax(flags[:, i])), i])
        if cond is HealthCondition.OUT_OF_RANGE:
            return f"{k} samples outside [{self._lo[i]:g}, {self._hi[i]:g}], e.g. {v:g}"
        if cond is HealthCondition.STUCK:
            return f"value {v:g} repeated >= {self.cfg.stuck_after_samples} times"
        return f"{k} non-finite samples"

    def _event(
        self, channel: str, cond: HealthCondition, active: bool, detail: str, now: float
    ) -> HealthEvent:
        return HealthEvent(self.stream, channel, cond, active, detail, now)
