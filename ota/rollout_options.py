"""A rollout's option values, pure: durations, cumulative wave sizes, the failure
threshold. Malformed values are `RolloutUsageError` (exit 2)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ota.rollout_state import RolloutUsageError

__all__ = [
    "Threshold",
    "WaveSize",
    "parse_duration",
    "parse_threshold",
    "parse_waves",
    "wave_sizes",
]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, what: str = "duration", *, positive: bool = False) -> float:
    """`10m`, `30s`, `2h`, `1d` or plain seconds (`45`, `2.5`). With `positive`, 0 is
    refused too (a deadline of 0 s fails every device at its first poll; a poll of 0 s
    re-reads the whole fleet back to back)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise RolloutUsageError(f"{what} {text!r}: expected seconds or 30s / 10m / 2h / 1d")
    value = float(m.group(1)) * _UNIT_S[m.group(2)]
    if positive and value <= 0:
        raise RolloutUsageError(f"{what} {text!r}: must be more than 0")
    return value


@dataclass(frozen=True)
class WaveSize:
    value: float
    percent: bool

    def count(self, planned: int) -> int:
        if self.percent:  # at least the share asked for: 20% of 4 devices is 1
            return min(planned, math.ceil(self.value * planned / 100 - 1e-9))
        return min(planned, int(self.value))


def parse_waves(text: str) -> list[WaveSize]:
    """`2,20%,100%`: cumulative sizes, counts or percentages of the planned devices."""
    out: list[WaveSize] = []
    for part in text.split(","):
        p = part.strip()
        pct = p.endswith("%")
        num = p[:-1].strip() if pct else p
        try:
            value = float(num) if pct else int(num)
        except ValueError:
            raise RolloutUsageError(
                f"--waves {text!r}: {p!r} is neither a device count nor a percentage"
            ) from None
        if value <= 0 or (pct and value > 100):
            raise RolloutUsageError(f"--waves {text!r}: {p!r} is out of range")
        prev = next((w for w in reversed(out) if w.percent == pct), None)
        if out and out[-1].percent and out[-1].value >= 100:
            raise RolloutUsageError(f"--waves {text!r}: 100% must be the last wave")
        if prev is not None and value <= prev.value:
            # cumulative sizes: a smaller one would add nobody and be dropped silently
            raise RolloutUsageError(
                f"--waves {text!r}: {p!r} is not above an earlier wave; sizes are cumulative "
                "and must grow (e.g. 1,3,100%)"
            )
        out.append(WaveSize(float(value), pct))
    if not out:
        raise RolloutUsageError("--waves: give at least one wave, e.g. 1,10%,100%")
    return out  # that the last wave reaches everyone is checked against the plan


def wave_sizes(specs: Sequence[WaveSize], planned: int) -> list[int]:
    """Cumulative device counts per wave for `planned` devices; waves that add nobody
    are dropped. The last wave must reach every planned device."""
    sizes: list[int] = []
    for s in specs:
        n = s.count(planned)
        if n > (sizes[-1] if sizes else 0):
            sizes.append(n)
    if not sizes or sizes[-1] != planned:
        raise RolloutUsageError(
            f"the waves reach {sizes[-1] if sizes else 0} of {planned} planned devices: "
            "the last wave must reach all of them (end --waves with 100%)"
        )
    return sizes


@dataclass(frozen=True)
class Threshold:
    """`--max-failures`: N devices or P% of the planned ones; more failures than this
    halt the rollout (0: the first failure halts it)."""

    value: float
    percent: bool

    def allowed(self, planned: int) -> int:
        if self.percent:
            return math.floor(self.value * planned / 100 + 1e-9)
        return int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))


def parse_threshold(text: str) -> Threshold:
    t = text.strip()
    pct = t.endswith("%")
    try:
        value = float(t[:-1]) if pct else int(t)
    except ValueError:
        raise RolloutUsageError(f"--max-failures {text!r}: expected N or P%") from None
    if value < 0 or (pct and value > 100):
        raise RolloutUsageError(f"--max-failures {text!r}: out of range")
    return Threshold(float(value), pct)
