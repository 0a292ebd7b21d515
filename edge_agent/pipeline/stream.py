"""One stream's scoring loop: blocks in, anomaly events out.

No I/O: the caller feeds blocks and takes events. The model can be swapped between
batches (`swap_model`) so an OTA promotion never drops a window; an optional shadow
hook sees every scored batch (OTA candidates run beside the active model there).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.alarms import AlarmPolicy, Transition
from edge_agent.pipeline.windows import Windower, Windows
from edge_agent.runtime.model import LoadedModel
from edge_agent.sources.base import Block

__all__ = ["AnomalyEvent", "Interval", "ShadowHook", "StreamPipeline", "StreamStats"]

# Sees each scored batch: windows (normalised with the active model's statistics; see
# LoadedModel.denormalize), the active model's scores, and the active model.
ShadowHook = Callable[[Windows, npt.NDArray[np.float64], LoadedModel], None]


@dataclass(frozen=True)
class AnomalyEvent:
    stream: str
    transition: Transition
    window_start: int  # absolute sample index of the window where the state changed
    ts: float  # timestamp of that window's last sample
    score: float
    peak: float
    threshold: float
    model: str
    model_version: int
    windows: int  # alarm length in windows (end events)
    started_ts: float  # when the alarm started (== ts on start events)

    def to_payload(self) -> dict[str, Any]:
        d = asdict(self)
        d["transition"] = self.transition.value
        return d


@dataclass
class Interval:
    """Scoring since the previous telemetry record."""

    windows: int = 0
    score_sum: float = 0.0
    score_max: float | None = None
    alarms: int = 0

    @property
    def score_mean(self) -> float | None:
        return self.score_sum / self.windows if self.windows else None


@dataclass
class StreamStats:
    windows: int = 0
    skipped_windows: int = 0
    alarms: int = 0
    events: int = 0
    last_score: float | None = None
    nonfinite_scores: int = 0


class StreamPipeline:
    def __init__(
        self,
        name: str,
        model: LoadedModel,
        policy: AlarmPolicy,
        *,
        window: int,
        hop: int,
        max_batch: int = 16,
    ) -> None:
        self.name = name
        self.model = model
        self.policy = policy
        self.window, self.hop = window, hop
        self.max_batch = max_batch
        self.windower = Windower(window, hop, model.card.preprocessing.columns)
        self.stats = StreamStats()
        self.shadow: ShadowHook | None = None
        self._lock = threading.Lock()  # guards model swaps against a running batch
        self._t_ref = (0.0, 0, 1.0)  # (t0, seq, rate) of the newest block, for timestamps
        self._alarm_started_ts = 0.0
        self._interval = Interval()

    @property
    def threshold(self) -> float:
        return self.policy.threshold

    def swap_model(self, model: LoadedModel, policy: AlarmPolicy | None = None) -> LoadedModel:
        """Replace the model at the next batch boundary; returns the old one.

        Buffered samples are kept (no window is lost) and re-expressed in the new
        model's normalisation."""
        with self._lock:
            old, self.model = self.model, model
            scale, offset = _renormalization(old, model)
            if scale is not None and offset is not None:
                self.windower.rescale(scale, offset)
            if policy is not None:
                policy.state = self.policy.state  # an open alarm stays open across a swap
                self.policy = policy
            return old

    def _ts(self, start: int) -> float:
        t0, seq, rate = self._t_ref
        return t0 + (start + self.window - 1 - seq) / rate

    def process(self, block: Block, bad: npt.NDArray[np.bool_] | None = None) -> list[AnomalyEvent]:
        self._t_ref = (block.t0, block.seq, block.rate_hz or 1.0)
        with self._lock:
            # Normalise once per sample, not once per window: windows overlap window/hop times.
            w = self.windower.push(self.model.normalize(block.samples), block.seq, bad)
        self.stats.skipped_windows += w.skipped
        if len(w.data) <= self.max_batch:
            return self._score(w) if len(w.data) else []
        events: list[AnomalyEvent] = []
        for i in range(0, len(w.data), self.max_batch):
            part = Windows(w.data[i : i + self.max_batch], w.starts[i : i + self.max_batch], 0)
            events.extend(self._score(part))
        return events

    def _score(self, w: Windows) -> list[AnomalyEvent]:
        with self._lock:
            model, policy = self.model, self.policy
            scores = model.scores_normalized(w.data)
            st = self.stats
            total = float(scores.sum())
            if not math.isfinite(total):  # one reduction instead of a mask on every batch
                # A model emitting NaN is a model fault, not an anomaly: count, don't alarm.
                finite = np.isfinite(scores)
                st.nonfinite_scores += int((~finite).sum())
                scores = np.where(finite, scores, 0.0)
                total = float(scores.sum())
            n, peak = len(scores), float(scores.max())
            st.windows += n
            st.last_score = float(scores[-1])
            iv = self._interval
            iv.windows += n
            iv.score_sum += total
            iv.score_max = max(iv.score_max or 0.0, peak)
            changes = policy.update(scores)
            if self.shadow is not None:
                self.shadow(w, scores, model)
        out = []
        for ch in changes:
            start = int(w.starts[ch.index])
            ts = self._ts(start)
            if ch.transition is Transition.START:
                st.alarms += 1
                self._interval.alarms += 1
                self._alarm_started_ts = ts
            out.append(
                AnomalyEvent(
                    stream=self.name,
                    transition=ch.transition,
                    window_start=start,
                    ts=ts,
                    score=float(scores[ch.index]),
                    peak=ch.peak,
                    threshold=policy.threshold,
                    model=model.card.name,
                    model_version=model.card.version,
                    windows=ch.windows,
                    started_ts=self._alarm_started_ts,
                )
            )
        st.events += len(out)
        return out

    def take_interval(self) -> Interval:
        """Figures since the previous call (for telemetry), and start a new interval."""
        with self._lock:
            iv, self._interval = self._interval, Interval()
        return iv


def _renormalization(
    old: LoadedModel, new: LoadedModel
) -> tuple[npt.NDArray[np.float32] | None, npt.NDArray[np.float32] | None]:
    """(scale, offset) taking old-normalised samples to new-normalised, or (None, None)."""
    om, os_ = old.norm_stats
    nm, ns = new.norm_stats
    if np.array_equal(om, nm) and np.array_equal(os_, ns):
        return None, None
    return (os_ / ns).astype(np.float32), ((om - nm) / ns).astype(np.float32)
