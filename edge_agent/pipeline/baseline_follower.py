"""A stream's adaptive baseline at run time: feeds AdaptiveBaseline with each block,
swaps the pipeline's normalisation when it moved, and keeps what it adapted to in
`<state_dir>/calibration/<stream>.baseline.json` (beside the calibration; resumed on
restart while the model and the calibration it started from are the same).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.fsutil import atomic_write_json, read_json
from edge_agent.pipeline.baseline import AdaptiveBaseline, BaselineChange, ChangeKind
from edge_agent.pipeline.baseline_config import BaselineConfig
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.runtime.model import LoadedModel
from edge_agent.sources.base import Block

__all__ = ["APPLY_STEP", "BaselineFollower", "baseline_path"]

log = logging.getLogger(__name__)

APPLY_STEP = 0.05  # swap the normalisation when the mean moved this many stds (or relearn)
SAVE_EVERY_S = 60.0


def baseline_path(state_dir: Path, stream: str) -> Path:
    safe = stream.replace("/", "_")
    return Path(state_dir) / "calibration" / f"{safe}.baseline.json"


def _rate(block: Block) -> float:
    """Samples per second: from the block's own sample times when it has them (a
    recording's timestamps), else its nominal rate; 0 if neither says."""
    t = block.times
    if t is not None and len(t) > 1 and t[-1] > t[0]:
        return float((len(t) - 1) / (t[-1] - t[0]))
    return float(block.rate_hz or 0.0)


class BaselineFollower:
    def __init__(
        self, state_dir: Path, stream: str, cfg: BaselineConfig, pipeline: StreamPipeline
    ) -> None:
        self.path = baseline_path(state_dir, stream)
        self.stream, self.cfg, self.pipeline = stream, cfg, pipeline
        self.tracker: AdaptiveBaseline | None = None
        self._ours: LoadedModel | None = None  # the model we put in the pipeline
        self._applied = np.zeros(0)
        self._saved_at = 0.0
        self._dirty = False

    def after_block(self, block: Block) -> None:
        """Call after the pipeline scored `block` (stream thread)."""
        p = self.pipeline
        if self.tracker is None or p.model is not self._ours:
            self._start(p.model, _rate(block))  # first block, or a swap by calibration/OTA
        assert self.tracker is not None
        st = p.policy.state
        change = self.tracker.update(
            block.samples, quiet=not st.active and st.above == 0, alarm_open=st.active
        )
        if change is not None:
            self._apply(change)

    def _start(self, model: LoadedModel, rate_hz: float) -> None:
        mean, std = model.norm_stats
        resumed = self._load(model, mean, std)
        self.tracker = AdaptiveBaseline(
            mean,
            std,
            rate_hz=rate_hz if rate_hz > 0 else max(model.card.preprocessing.rate_hz, 1.0),
            follow_s=self.cfg.follow_s,
            settle_s=self.cfg.settle_s,
            mean=None if resumed is None else resumed[0],
            std=None if resumed is None else resumed[1],
        )
        self._ours = model
        self._applied = np.asarray(mean, np.float64)
        if resumed is not None:
            log.info("stream %s: adaptive baseline resumed from %s", self.stream, self.path)
            self._swap(self.tracker.mean, self.tracker.std)

    def _apply(self, change: BaselineChange) -> None:
        t = self.tracker
        assert t is not None
        moved = np.max(np.abs(change.mean - self._applied) / change.std)
        if change.kind is ChangeKind.RELEARN:
            log.warning(
                "stream %s: adaptive baseline settled at a new level (shift of up to %.1f std)",
                self.stream,
                moved,
            )
        elif moved < APPLY_STEP:
            return
        self._swap(change.mean, change.std)
        self._dirty = True
        now = time.monotonic()
        if change.kind is ChangeKind.RELEARN or now - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def _swap(self, mean: np.ndarray, std: np.ndarray) -> None:
        assert self._ours is not None
        new = self._ours.with_normalization(mean.astype(np.float32), std.astype(np.float32))
        self.pipeline.swap_model(new)
        self._ours = new
        self._applied = np.asarray(mean, np.float64)

    def _load(
        self, model: LoadedModel, mean: np.ndarray, std: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            d = read_json(self.path)
        except FileNotFoundError:
            return None
        except (EdgeAgentError, OSError, ValueError) as e:
            log.warning(
                "stream %s: stored baseline unreadable, starting afresh: %s", self.stream, e
            )
            return None
        if not isinstance(d, dict) or d.get("model_sha256") != model.card.sha256:
            return None
        try:
            same = np.allclose(d["anchor_mean"], mean) and np.allclose(d["anchor_std"], std)
            saved = np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64)
        except (KeyError, TypeError, ValueError):
            return None
        if not same or saved[0].shape != mean.shape or saved[1].shape != std.shape:
            return None  # calibrated again since (or another layout): start afresh
        return saved if self._sane(*saved) else None

    def _sane(self, mean: np.ndarray, std: np.ndarray) -> bool:
        """False (and a warning) for a damaged file: resuming non-finite or non-positive
        values would fail the stream on every restart or make every window an alarm."""
        if np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0):
            return True
        log.warning(
            "stream %s: stored baseline %s holds non-finite or non-positive values, "
            "starting afresh",
            self.stream,
            self.path,
        )
        return False

    def save(self) -> None:
        t, m = self.tracker, self._ours
        if t is None or m is None or not self._dirty:
            return
        try:
            atomic_write_json(self.path, self.to_json(m))
        except OSError as e:
            log.error("stream %s: adaptive baseline not stored: %s", self.stream, e)
            return
        self._saved_at, self._dirty = time.monotonic(), False

    def to_json(self, model: LoadedModel) -> dict[str, Any]:
        t = self.tracker
        assert t is not None
        return {
            "v": 1,
            "stream": self.stream,
            "model_sha256": model.card.sha256,
            "anchor_mean": t.anchor_mean.tolist(),
            "anchor_std": t.anchor_std.tolist(),
            "mean": t.mean.tolist(),
            "std": t.std.tolist(),
            "relearns": t.relearns,
            "updated": time.time(),
        }

    def snapshot(self) -> dict[str, Any]:
        """For status: mode, how far the baseline moved from where it started (in the
        starting std per channel), settles after shifts, the current mean/std."""
        t = self.tracker
        out: dict[str, Any] = {
            "mode": "adaptive",
            "follow_s": self.cfg.follow_s,
            "settle_s": self.cfg.settle_s,
        }
        if t is None:
            return out
        shift = (t.mean - t.anchor_mean) / t.anchor_std
        return {
            **out,
            "shift_std": [round(float(v), 3) for v in shift],
            "relearns": t.relearns,
            "mean": t.mean.tolist(),
            "std": t.std.tolist(),
            "frozen": bool(self.pipeline.policy.state.active),
        }
