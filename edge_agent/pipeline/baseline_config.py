"""Adaptive-baseline settings of a stream (plain data, no numpy; see baseline.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edge_agent.schema import check

__all__ = ["BaselineConfig"]


@dataclass(frozen=True)
class BaselineConfig:
    # fixed: the calibration's (or card's) normalisation, always; adaptive: it follows
    # slow changes and settles after level shifts (docs/your-data.md)
    mode: Literal["fixed", "adaptive"] = "fixed"
    # time constant of following slow changes (seconds of sample time)
    follow_s: float = field(default=3600.0, metadata=check("positive"))
    # an alarm open this long on a steady new level is taken as a new set point
    settle_s: float = field(default=600.0, metadata=check("positive"))
