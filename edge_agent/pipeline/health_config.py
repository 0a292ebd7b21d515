"""Sensor-health settings (plain data, no numpy): the config parser imports them, so
`edge-agent status` and the other read-only commands start without loading numpy."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.schema import check

__all__ = ["ChannelRange", "SensorHealthConfig"]


@dataclass(frozen=True)
class ChannelRange:
    """Physical limits of one channel; a reading outside is a sensor fault, not a process one."""

    channel: str = field(metadata=check("nonempty"))
    min: float
    max: float

    def __post_init__(self) -> None:
        if not self.min < self.max:
            raise ValueError(f"range for {self.channel!r}: min {self.min} must be < max {self.max}")


@dataclass(frozen=True)
class SensorHealthConfig:
    ranges: tuple[ChannelRange, ...] = ()
    # 0 = off: many real sensors (coarse temperature) legitimately repeat values
    stuck_after_samples: int = field(default=0, metadata=check("nonneg"))
    stall_after_s: float = field(default=10.0, metadata=check("positive"))
    # relative: 0.5 flags a measured rate outside [0.5x, 1.5x] configured; 0 = off
    rate_tolerance: float = field(default=0.5, metadata=check("nonneg"))
    rate_window_s: float = field(default=10.0, metadata=check("positive"))
    clear_after_samples: int = field(default=100, metadata=check("positive"))
    # a hole in the data (reconnect, lost frames, a time jump) this long is a `gap`; 0 = off
    gap_event_s: float = field(default=1.0, metadata=check("nonneg"))
