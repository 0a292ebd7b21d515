"""One stream's scoring loop: blocks in, anomaly events out.

No I/O: the caller feeds blocks and takes events. The model can be swapped between
blocks (`swap_model`) so an OTA promotion never drops a window; an optional shadow
hook sees every scored batch (OTA candidates run beside the active model there).

What serves a stream is one value, `Serving` (the model, with its normalisation, and
the alarm policy): a block is normalised, windowed and scored with one `Serving`, and
a swap replaces the whole value between blocks, so no window is ever normalised for
one model and scored by another.

More abnormal is never quieter: a window holding a reading far beyond the model's range
scores SATURATED_SCORE (see LoadedModel.scores_normalized), which opens an alarm like
any score above the threshold; NaN/inf from the model on in-range input is a model
fault, counted (`nonfinite_scores`, status, the OTA trial) and not alarmed on.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.alarms import AlarmPolicy, Transition
from edge_agent.pipeline.windows import Windower, Windows
from edge_agent.runtime.model import SATURATED_SCORE, LoadedModel
from edge_agent.sources.base import Block

__all__ = [
    "AnomalyEvent",
    "Interval",
    "Scorer",
    "Serving",
    "ShadowHook",
    "StreamPipeline",
    "StreamStats",
]

# Sees each scored batch: windows (normalised with the active model's statistics; see
# LoadedModel.denormalize), the active model's scores, and the active model.
ShadowHook = Callable[[Windows, npt.NDArray[np.float64], LoadedModel], None]
# Scores normalised windows (n, window, columns) with a model, e.g. through the model's
# inference scheduler (runtime/scheduler.py); None: LoadedModel.scores_normalized here.
Scorer = Callable[[LoadedModel, npt.NDArray[np.float32]], npt.NDArray[np.float64]]


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
    window_samples: int = 0  # the deciding window: samples window_start .. + window_samples - 1

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
    nonfinite_scores: int = 0  # NaN/inf from the model on in-range input: a model fault
    saturated_windows: int = 0  # windows beyond the model's range, scored SATURATED_SCORE


@dataclass(frozen=True)
class Serving:
    """What scores a stream, swapped as one value: the model (whose normalisation, the
    card's or an on-site calibration's, travels with it) and the alarm policy."""

    model: LoadedModel
    policy: AlarmPolicy


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
        self._serving = Serving(model, policy)
        self.window, self.hop = window, hop
        self.max_batch = max_batch
        self.windower = Windower(window, hop, model.card.preprocessing.columns)
        self.stats = StreamStats()
        self.shadow: ShadowHook | None = None
        self.scorer: Scorer | None = None
        # Held for a whole block (normalise, window, score) and by swaps: a swap lands
        # between blocks, and returns when the old model is no longer in use.
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()  # the telemetry interval (short, no inference)
        self._alarm_started_ts = 0.0
        self._interval = Interval()

    @property
    def serving(self) -> Serving:
        return self._serving

    @property
    def model(self) -> LoadedModel:
        return self._serving.model

    @property
    def policy(self) -> AlarmPolicy:
        return self._serving.policy

    @property
    def threshold(self) -> float:
        return self._serving.policy.threshold

    def swap_model(self, model: LoadedModel, policy: AlarmPolicy | None = None) -> LoadedModel:
        """Serve `model` (and `policy`; None keeps the current one) from the next block
        on; returns the old model. Waits for a block being scored, so on return the old
        model is out of use.

        Buffered samples are kept (no window is lost) and re-expressed in the new
        model's normalisation, under the same lock as the swap itself."""
        with self._lock:
            old = self._serving
            if policy is not None:
                policy.state = old.policy.state  # an open alarm stays open across a swap
            new = replace(old, model=model, policy=policy or old.policy)
            scale, offset = _renormalization(old.model, model)
            if scale is not None and offset is not None:
                self.windower.rescale(scale, offset)
            self._serving = new
            return old.model

    def _ts(self, block: Block, start: int) -> float:
        """The time of the window's last sample: every window cut from a push ends
        inside the block pushed, so its sample times time each event."""
        return block.time_of(start + self.window - 1 - block.seq)

    def process(self, block: Block, bad: npt.NDArray[np.bool_] | None = None) -> list[AnomalyEvent]:
        """Windows completed by `block`, scored; the alarm events they raise. The block is
        not kept once this returns (a stream between turns holds no turn-sized array:
        64 max-speed streams held 64 of 384 kB, each turn's allocations then landing in
        memory gone cold: 4% of a turn)."""
        with self._lock:
            sv = self._serving  # one model, normalisation and policy for the whole block
            # Normalise once per sample, not once per window: windows overlap window/hop times.
            x = sv.model.normalize(block.samples)
            w = self.windower.push(x, block.seq, bad, gap=block.gap_before)
            self.stats.skipped_windows += w.skipped
            k, mb = len(w.data), self.max_batch
            if k <= mb:
                return self._score(block, w, sv) if k else []
            # A scorer (the model's scheduler) bounds its backend calls itself: the whole
            # block is one hand-over to it instead of one per max_batch windows (each a
            # round trip between threads).
            if self.scorer is not None:
                scores = self.scorer(sv.model, w.data)
            else:
                parts = [sv.model.scores_normalized(w.data[i : i + mb]) for i in range(0, k, mb)]
                scores = np.concatenate(parts)
            if self.shadow is None:
                # stats and alarm policy run on a whole block as on its parts, in one pass
                return self._score(block, w, sv, scores)
            # a shadow (an OTA candidate scoring the same windows) gets max_batch parts
            events: list[AnomalyEvent] = []
            for i in range(0, k, mb):
                part = Windows(w.data[i : i + mb], w.starts[i : i + mb], 0)
                events.extend(self._score(block, part, sv, scores[i : i + mb]))
            return events

    def _score(
        self,
        block: Block,
        w: Windows,
        sv: Serving,
        scores: npt.NDArray[np.float64] | None = None,
    ) -> list[AnomalyEvent]:
        """Scores `w` (cut from `block`, or takes its `scores`, already computed), then
        stats, alarms, the shadow hook and events."""
        model, policy = sv.model, sv.policy
        st = self.stats
        if scores is None:
            # saturated beyond the model's range; the scorer may batch with other streams
            scorer = self.scorer
            scores = model.scores_normalized(w.data) if scorer is None else scorer(model, w.data)
        total = float(scores.sum())
        if not math.isfinite(total):  # one reduction instead of a mask on every batch
            # NaN/inf on in-range input is a model fault, not an anomaly: counted (status,
            # OTA trial), not alarmed on.
            finite = np.isfinite(scores)
            st.nonfinite_scores += int((~finite).sum())
            scores = np.where(finite, scores, 0.0)
            total = float(scores.sum())
        n, peak = len(scores), float(scores.max())
        if peak >= SATURATED_SCORE:
            st.saturated_windows += int((scores >= SATURATED_SCORE).sum())
        st.windows += n
        st.last_score = float(scores[-1])
        with self._stats_lock:
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
            ts = self._ts(block, start)
            if ch.transition is Transition.START:
                st.alarms += 1
                with self._stats_lock:
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
                    window_samples=self.window,
                )
            )
        st.events += len(out)
        return out

    def take_interval(self) -> Interval:
        """Figures since the previous call (for telemetry), and start a new interval."""
        with self._stats_lock:
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
