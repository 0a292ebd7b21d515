"""Pure judgements of an OTA candidate: latency, shadow comparison, trial health.

Values in, a Verdict out; no clocks, threads or files (the updater measures, this decides).

Alarm-rate rule (shadow and trial): a candidate fails when the fraction of windows whose
score exceeds its threshold is above max(RATE_FACTOR x the other model's fraction on the
same windows, that fraction + RATE_MARGIN). In shadow the other model is the active one;
during the trial it is the previous one, still running beside it. Any NaN/inf fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "RATE_FACTOR",
    "RATE_MARGIN",
    "AlarmRule",
    "ShadowTally",
    "TrialTally",
    "Verdict",
    "judge_latency",
    "judge_shadow",
    "judge_trial",
]

RATE_FACTOR = 3.0  # a candidate may alarm up to 3x as often as the model it replaces ...
RATE_MARGIN = 0.05  # ... or 5 percentage points more, whichever is larger
SCORES_KEPT = 4096  # bound on the scores kept per model for the distribution comparison


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AlarmRule:
    factor: float = RATE_FACTOR
    margin: float = RATE_MARGIN

    def limit(self, active_rate: float) -> float:
        return max(self.factor * active_rate, active_rate + self.margin)


def judge_latency(per_window_ms: float, budget_ms: float) -> Verdict:
    figures = {"window_latency_ms": round(per_window_ms, 4), "budget_ms": budget_ms}
    if not math.isfinite(per_window_ms) or per_window_ms > budget_ms:
        return Verdict(
            False,
            f"{per_window_ms:.3f} ms per window exceeds the profile budget of {budget_ms:g} ms",
            figures,
        )
    return Verdict(True, "latency within budget", figures)


@dataclass
class ShadowTally:
    """Accumulated while the candidate runs beside the active model (mutable, one owner).
    Each batch comes with the thresholds of its own stream (`add`), so streams with
    different thresholds are each judged by their own."""

    windows: int = 0
    skipped: int = 0  # windows not shadowed because the shadow worker fell behind
    nonfinite: int = 0
    active_over: int = 0
    candidate_over: int = 0
    active_scores: list[float] = field(default_factory=list)
    candidate_scores: list[float] = field(default_factory=list)

    def add(
        self,
        active: npt.NDArray[np.float64],
        candidate: npt.NDArray[np.float64],
        active_threshold: float,
        candidate_threshold: float,
    ) -> None:
        finite = np.isfinite(candidate)
        self.windows += len(candidate)
        self.nonfinite += int((~finite).sum())
        self.active_over += int((active > active_threshold).sum())
        self.candidate_over += int((candidate[finite] > candidate_threshold).sum())
        room = SCORES_KEPT - len(self.active_scores)
        if room > 0:
            self.active_scores.extend(active[:room].tolist())
            self.candidate_scores.extend(np.where(finite, candidate, np.nan)[:room].tolist())

    @property
    def active_rate(self) -> float:
        return self.active_over / self.windows if self.windows else 0.0

    @property
    def candidate_rate(self) -> float:
        return self.candidate_over / self.windows if self.windows else 0.0

    def figures(self) -> dict[str, Any]:
        a = np.asarray(self.active_scores, dtype=np.float64)
        c = np.asarray(self.candidate_scores, dtype=np.float64)
        c = c[np.isfinite(c)]
        am = float(np.median(a)) if len(a) else None
        cm = float(np.median(c)) if len(c) else None
        ratio = cm / am if am and cm is not None else None
        return {
            "windows": self.windows,
            "skipped": self.skipped,
            "nonfinite": self.nonfinite,
            "active_alarm_rate": round(self.active_rate, 4),
            "candidate_alarm_rate": round(self.candidate_rate, 4),
            "active_median": am,
            "candidate_median": cm,
            "median_ratio": None if ratio is None else round(ratio, 4),
        }


def judge_shadow(t: ShadowTally, rule: AlarmRule | None = None) -> Verdict:
    rule = rule or AlarmRule()
    figures = t.figures()
    if t.windows == 0:
        return Verdict(False, "no window was shadowed", figures)
    if t.nonfinite:
        return Verdict(False, f"{t.nonfinite} of {t.windows} shadow scores are NaN/inf", figures)
    limit = rule.limit(t.active_rate)
    if t.candidate_rate > limit:
        return Verdict(
            False,
            f"alarm rate {t.candidate_rate:.1%} in shadow, active model {t.active_rate:.1%} "
            f"(limit {limit:.1%})",
            figures,
        )
    return Verdict(True, "shadow comparison passed", figures)


@dataclass(frozen=True)
class TrialTally:
    windows: int
    nonfinite: int
    over: int  # windows above the (new) threshold


def judge_trial(
    t: TrialTally, baseline_rate: float, target: int, rule: AlarmRule | None = None
) -> Verdict | None:
    """Final verdict once `target` windows were seen, an early failure, or None (go on)."""
    rule = rule or AlarmRule()
    figures = {
        "windows": t.windows,
        "nonfinite": t.nonfinite,
        "alarm_rate": round(t.over / t.windows, 4) if t.windows else 0.0,
        "baseline_rate": round(baseline_rate, 4),
    }
    if t.nonfinite:
        return Verdict(False, f"{t.nonfinite} NaN/inf scores during the trial", figures)
    allowed = rule.limit(baseline_rate) * max(target, t.windows)
    if t.over > allowed:  # already beyond what the whole trial may hold: stop early
        return Verdict(
            False,
            f"alarm storm during the trial: {t.over} of {t.windows} windows over the "
            f"threshold (baseline {baseline_rate:.1%})",
            figures,
        )
    if t.windows >= target:
        return Verdict(True, f"healthy for {t.windows} windows", figures)
    return None
