"""Detection quality: pointwise confusion counts and the SKAB metrics. Pure.

Definitions (SKAB outlier-detection leaderboard), counts pooled over all files:
    F1  = TP / (TP + (FP + FN) / 2)
    FAR = 100 * FP / (FP + TN)   (false alarm rate, %)
    MAR = 100 * FN / (FN + TP)   (missing alarm rate, %)
A ratio with a zero denominator is reported as NaN (undefined), never as 0.

`pointwise_alarm` turns the agent's alarm transitions into a causal 0/1 prediction
per row: a row is predicted anomalous iff the alarm was open after the newest window
ending at or before that row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Counts", "confusion", "pointwise_alarm"]


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, o: Counts) -> Counts:
        return Counts(self.tp + o.tp, self.fp + o.fp, self.fn + o.fn, self.tn + o.tn)

    @property
    def f1(self) -> float:
        d = self.tp + (self.fp + self.fn) / 2
        return self.tp / d if d else math.nan

    @property
    def far(self) -> float:
        d = self.fp + self.tn
        return 100.0 * self.fp / d if d else math.nan

    @property
    def mar(self) -> float:
        d = self.fn + self.tp
        return 100.0 * self.fn / d if d else math.nan


def confusion(pred: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> Counts:
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and labels {t.shape} differ in shape")
    return Counts(
        tp=int(np.sum(p & t)),
        fp=int(np.sum(p & ~t)),
        fn=int(np.sum(~p & t)),
        tn=int(np.sum(~p & ~t)),
    )


def pointwise_alarm(n_rows: int, transitions: Iterable[tuple[int, bool]]) -> npt.NDArray[np.bool_]:
    """Per-row alarm state from (row where the deciding window ends, alarm open after it).

    Transitions must come in time order; rows before the first one are not in alarm."""
    out = np.zeros(n_rows, dtype=bool)
    state, since = False, 0
    for row, active in transitions:
        if row < since:
            raise ValueError(f"transitions out of order at row {row}")
        if state:
            out[since:row] = True
        state, since = active, max(row, 0)
    if state:
        out[since:] = True
    return out
