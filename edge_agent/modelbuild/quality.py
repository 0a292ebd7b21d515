"""The quality report of a freshly built model (pure: scores in, figures out).

A file's windows are scored, the card's alarm policy runs over them in order, and each
row is in alarm iff the alarm was open after the newest window ending at or before it
(causal, as on the device). On held-out normal data every alarm is a false one; on a
labelled file rows are counted against the labels (TP/FP/FN/TN, F1, FAR, MAR).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.measure.evaluation import Counts, confusion, pointwise_alarm
from edge_agent.pipeline.alarms import AlarmPolicy, Transition
from edge_agent.runtime.card import AlarmDefaults

__all__ = ["FileResult", "Scorer", "fmt", "run_file", "summary"]

F32 = npt.NDArray[np.float32]
Scorer = Callable[[F32], npt.NDArray[np.float64]]  # raw windows -> scores
BATCH = 512


@dataclass(frozen=True)
class FileResult:
    name: str
    rows: int
    windows: int
    alarms: tuple[tuple[int, int | None], ...]  # (start row, end row or None if still open)
    in_alarm: npt.NDArray[np.bool_]  # per row
    counts: Counts | None  # vs labels, when the file has them


def _cut(x: F32, window: int, hop: int) -> tuple[F32, npt.NDArray[np.int64]]:
    """Valid windows and the row each ends on."""
    if len(x) < window:
        return np.empty((0, window, x.shape[1]), np.float32), np.empty(0, np.int64)
    v = np.lib.stride_tricks.sliding_window_view(x, window, axis=0)[::hop]
    w = np.ascontiguousarray(v.transpose(0, 2, 1)).astype(np.float32)
    ends = np.arange(len(w), dtype=np.int64) * hop + window - 1
    ok = np.all(np.isfinite(w.reshape(len(w), -1)), axis=1)
    return w[ok], ends[ok]


def run_file(
    name: str,
    x: F32,
    *,
    score: Scorer,
    threshold: float,
    alarm: AlarmDefaults,
    window: int,
    hop: int,
    labels: npt.NDArray[np.bool_] | None = None,
) -> FileResult:
    w, ends = _cut(x, window, hop)
    s = (
        np.concatenate([score(w[i : i + BATCH]) for i in range(0, len(w), BATCH)])
        if len(w)
        else np.empty(0)
    )
    policy = AlarmPolicy(
        threshold, min_on=alarm.min_on, min_off=alarm.min_off, hysteresis=alarm.hysteresis
    )
    trans = [(int(ends[c.index]), c.transition is Transition.START) for c in policy.update(s)]
    rows = pointwise_alarm(len(x), trans)  # from the row whose window decided it
    alarms: list[tuple[int, int | None]] = []
    for r, opened in trans:
        if opened:
            alarms.append((r, None))
        elif alarms:
            alarms[-1] = (alarms[-1][0], r)
    counts = confusion(rows, labels) if labels is not None else None
    return FileResult(name, len(x), len(w), tuple(alarms), rows, counts)


def _num(v: float) -> float | None:
    """JSON has no NaN: an undefined ratio (nothing to divide by) is null."""
    return None if math.isnan(v) else v


def fmt(v: float | None, spec: str) -> str:
    """A report figure for people: `n/a` where it is undefined."""
    return "n/a" if v is None else format(v, spec)


def summary(normal: list[FileResult], anomalous: list[FileResult]) -> dict[str, Any]:
    """The report's figures: false alarms on held-out normal data, detection on the
    anomalous files (pooled row counts where labelled, else alarms per file)."""
    rows = sum(r.rows for r in normal)
    in_alarm = sum(int(r.in_alarm.sum()) for r in normal)
    out: dict[str, Any] = {
        "held_out_normal": {
            "rows": rows,
            "windows": sum(r.windows for r in normal),
            "false_alarms": sum(len(r.alarms) for r in normal),
            "far_percent": 100.0 * in_alarm / rows if rows else None,
        }
    }
    if anomalous:
        files = [
            {
                "file": r.name,
                "rows": r.rows,
                "alarms": len(r.alarms),
                "first_alarm_row": r.alarms[0][0] if r.alarms else None,
            }
            for r in anomalous
        ]
        det: dict[str, Any] = {
            "files": files,
            "files_with_alarm": sum(1 for r in anomalous if r.alarms),
        }
        labelled = [r.counts for r in anomalous if r.counts is not None]
        if labelled:
            c = sum(labelled, Counts())
            det["labelled_rows"] = {
                "tp": c.tp,
                "fp": c.fp,
                "fn": c.fn,
                "tn": c.tn,
                "f1": _num(c.f1),
                "far_percent": _num(c.far),
                "mar_percent": _num(c.mar),
            }
        out["anomalous"] = det
    return out
