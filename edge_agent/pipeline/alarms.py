"""Alarm policy: scores in, anomaly start/end transitions out. Pure.

An alarm opens after `min_on` consecutive windows at or above the threshold and
closes after `min_off` consecutive windows below `threshold * hysteresis`; the band
between keeps the current state, so a score hovering at the threshold does not flap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["AlarmChange", "AlarmPolicy", "AlarmState", "Transition"]


class Transition(str, enum.Enum):
    START = "start"
    END = "end"


@dataclass(frozen=True)
class AlarmChange:
    transition: Transition
    index: int  # position in the scored batch where the change happened
    peak: float  # highest score in the alarm so far (END: of the whole alarm)
    windows: int  # windows the alarm lasted (END only)


@dataclass
class AlarmState:
    active: bool = False
    above: int = 0
    below: int = 0
    peak: float = 0.0
    length: int = 0


class AlarmPolicy:
    def __init__(
        self, threshold: float, *, min_on: int = 2, min_off: int = 3, hysteresis: float = 0.8
    ) -> None:
        if threshold <= 0 or min_on < 1 or min_off < 1 or not 0 < hysteresis <= 1:
            raise ValueError("threshold > 0, min_on >= 1, min_off >= 1, 0 < hysteresis <= 1")
        self.threshold = threshold
        self.off_threshold = threshold * hysteresis
        self.min_on, self.min_off = min_on, min_off
        self.state = AlarmState()

    def update(self, scores: npt.NDArray[np.float64]) -> list[AlarmChange]:
        out: list[AlarmChange] = []
        s = self.state
        if not s.active and (len(scores) == 0 or scores.max() < self.threshold):
            s.above = 0  # the common case, all quiet: no per-window loop at all
            return out
        # Per window, not per sample: a batch holds at most a few dozen windows.
        for i, v in enumerate(scores.tolist()):
            if not s.active:
                if v >= self.threshold:
                    s.peak = max(s.peak, v) if s.above else v  # the run-up counts too
                    s.above += 1
                else:
                    s.above = 0
                if s.above >= self.min_on:
                    s.active, s.below, s.length = True, 0, s.above
                    out.append(AlarmChange(Transition.START, i, s.peak, 0))
                continue
            s.length += 1
            s.peak = max(s.peak, v)
            s.below = s.below + 1 if v < self.off_threshold else 0
            if s.below >= self.min_off:
                out.append(AlarmChange(Transition.END, i, s.peak, s.length))
                s.active, s.above, s.below = False, 0, 0
        return out
