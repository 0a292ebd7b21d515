"""On-site calibration: fit normalisation and threshold to this machine's normal data.

A model is trained on one machine (or a test rig); another machine of the same kind
runs at other operating points. Calibration takes a stretch of the local machine's
normal operation and fits, per channel, the mean and standard deviation the model
normalises with, then the alarm threshold from the scores of that stretch's windows:

    std_c     = max(std of channel c, MIN_STD_RATIO * the card's std of c)
    threshold = quantile(scores of the calibration windows, QUANTILE) * MARGIN

The floor on std keeps a channel that happened to be quiet during calibration (a
slowly drifting temperature) from turning every later wobble into an alarm; the
quantile is the highest score seen on known-normal data (QUANTILE = 1.0) and the
margin leaves room for normal data not seen in a short calibration.

Core (`fit_calibration`) is pure apart from running the model: samples and time in,
a frozen `Calibration` out. Storage is `<state_dir>/calibration/<stream>.json`, written
atomically; the model's own (signed) files are never touched. A calibration belongs
to one model file (sha256): for any other model it is ignored with a warning -- unless
it was carried over to that model (`carry_over`): an update to a model of the same
family reading the same channels with the same window keeps the machine's statistics
and threshold (`carried_to` lists those models' sha256, the last CARRIED_KEPT).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from edge_agent.errors import CalibrationError, EdgeAgentError
from edge_agent.fsutil import atomic_write_json, read_json
from edge_agent.pipeline.windows import Windower, samples_needed
from edge_agent.runtime.card import ModelCard, Preprocessing
from edge_agent.runtime.model import FAR_SIGMAS, SATURATED_SCORE, LoadedModel

__all__ = [
    "CALIBRATION_DIR",
    "Calibration",
    "CalibrationParams",
    "Calibrator",
    "apply_calibration",
    "calibration_path",
    "carried",
    "carried_note",
    "carry_over",
    "fit_calibration",
    "load_calibration",
    "load_for_model",
    "matches_model",
    "not_applied_note",
    "samples_needed",
    "save_calibration",
    "threshold_warning",
]

log = logging.getLogger(__name__)

CALIBRATION_DIR = "calibration"
FORMAT_VERSION = 1
QUANTILE = 1.0
MARGIN = 1.5
MIN_STD_RATIO = 0.3
MIN_WINDOWS = 30  # fewer windows give no meaningful quantile
CONSTANT_REL_STD = 1e-6  # std below this fraction of max(|mean|, 1): a constant channel
# A fitted threshold this many times the card's: the calibration stretch scored far above
# the data the model was built on (a fault or defective parts in it, or a poor fit).
# Lower ones are normal: a quiet machine calibrates below the card (skab-zsq on SKAB:
# 0.07-0.9x).
SUSPICIOUS_RATIO = 5.0
SCORE_BATCH = 256  # windows per inference call while calibrating
CARRIED_KEPT = 4  # models a calibration was carried over to, remembered (rollbacks)


@dataclass(frozen=True)
class CalibrationParams:
    quantile: float = QUANTILE
    margin: float = MARGIN
    min_std_ratio: float = MIN_STD_RATIO
    min_windows: int = MIN_WINDOWS

    def __post_init__(self) -> None:
        if not 0.5 <= self.quantile <= 1.0 or self.margin < 1.0 or self.min_std_ratio < 0:
            raise CalibrationError(
                "calibration parameters: quantile in [0.5, 1], margin >= 1, min_std_ratio >= 0"
            )
        if self.min_windows < 1:
            raise CalibrationError("calibration parameters: min_windows >= 1")

    @property
    def method(self) -> str:
        return (
            f"mean/std per channel (std >= {self.min_std_ratio:g} x card std); threshold = "
            f"quantile {self.quantile:g} of calibration window scores x {self.margin:g}"
        )


@dataclass(frozen=True)
class Calibration:
    stream: str
    model_name: str
    model_version: int
    model_sha256: str
    channels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threshold: float
    method: str
    n_samples: int
    n_windows: int
    created: float
    score_quantile: float  # the quantile of calibration scores, before the margin
    params: CalibrationParams = field(default_factory=CalibrationParams)
    carried_to: tuple[str, ...] = ()  # sha256 of later models it was carried over to

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["v"] = FORMAT_VERSION
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> Calibration:
        try:
            if not isinstance(d, dict) or d.get("v") != FORMAT_VERSION:
                raise CalibrationError(f"{where}: not a calibration (format v{FORMAT_VERSION})")
            cal = cls(
                stream=str(d["stream"]),
                model_name=str(d["model_name"]),
                model_version=int(d["model_version"]),
                model_sha256=str(d["model_sha256"]),
                channels=tuple(str(c) for c in d["channels"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                threshold=float(d["threshold"]),
                method=str(d["method"]),
                n_samples=int(d["n_samples"]),
                n_windows=int(d["n_windows"]),
                created=float(d["created"]),
                score_quantile=float(d["score_quantile"]),
                params=CalibrationParams(**d["params"]),
                carried_to=tuple(str(x) for x in d.get("carried_to", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"{where}: malformed calibration: {e!r}") from e
        n = len(cal.channels)
        if len(cal.mean) != n or len(cal.std) != n:
            raise CalibrationError(f"{where}: mean/std must have one value per channel")
        if not all(math.isfinite(v) for v in cal.mean) or not all(
            math.isfinite(v) and v > 0 for v in cal.std
        ):
            raise CalibrationError(f"{where}: mean/std must be finite, std > 0")
        if not (math.isfinite(cal.threshold) and cal.threshold > 0):
            raise CalibrationError(f"{where}: threshold must be finite and > 0")
        return cal

    def summary(self) -> dict[str, Any]:
        """What status shows."""
        return {
            "threshold": self.threshold,
            "created": self.created,
            "n_samples": self.n_samples,
            "n_windows": self.n_windows,
            "method": self.method,
            "model": f"{self.model_name} v{self.model_version}",
            "model_sha256": self.model_sha256,
        }


def _by_channel(samples: npt.NDArray[np.float32], pre: Preprocessing) -> npt.NDArray[np.float32]:
    """(samples, columns) -> (values, channels). The same array for signals; an image
    model's one channel gathers every pixel of every frame (a card refuses frames with
    more than one channel, so the reshape is exact)."""
    if samples.ndim != 2 or samples.shape[1] != pre.columns:
        what = f"{pre.frame[0]}x{pre.frame[1]} frame pixels" if pre.frame else "channels"
        raise CalibrationError(
            f"calibration data: expected (samples, {pre.columns}) for {what} "
            f"{list(pre.channels)}, got shape {samples.shape}"
        )
    return samples.reshape(-1, len(pre.channels))


def _check_samples(samples: npt.NDArray[np.float32], channels: tuple[str, ...]) -> None:
    bad = ~np.isfinite(samples)
    if bad.any():
        cols = [
            f"{channels[i]} ({int(bad[:, i].sum())} samples)" for i in np.flatnonzero(bad.any(0))
        ]
        raise CalibrationError(
            f"calibration data holds NaN/inf in channel(s) {', '.join(cols)}: "
            "calibrate on a stretch where every sensor reads valid values"
        )


def fit_calibration(
    model: LoadedModel,
    samples: npt.NDArray[np.float32],
    *,
    stream: str,
    now: float,
    window: int | None = None,
    hop: int | None = None,
    params: CalibrationParams | None = None,
) -> Calibration:
    """Fit normalisation and threshold on normal samples (n, channels) of one stream.

    `model` is the stream's model as loaded (its card's normalisation is the floor
    reference); window/hop default to the card's. Raises CalibrationError on data that
    cannot give a trustworthy calibration."""
    p = params or CalibrationParams()
    card = model.card
    pre = card.preprocessing
    window, hop = window or pre.window, hop or pre.hop
    x = np.asarray(samples, dtype=np.float32)
    per_channel = _by_channel(x, pre)
    _check_samples(per_channel, pre.channels)
    need = samples_needed(window, hop, p.min_windows)
    if len(x) < need:
        raise CalibrationError(
            f"calibration data: {len(x)} samples, need at least {need} "
            f"({p.min_windows} windows of {window} samples, hop {hop})"
        )
    mean = per_channel.mean(axis=0, dtype=np.float64)
    std = per_channel.std(axis=0, dtype=np.float64)
    const = std <= CONSTANT_REL_STD * np.maximum(np.abs(mean), 1.0)
    if const.any():
        names = ", ".join(f"{pre.channels[i]} (= {mean[i]:g})" for i in np.flatnonzero(const))
        raise CalibrationError(
            f"calibration data: channel(s) {names} did not change over {len(x)} samples: "
            "a stuck or disconnected sensor, or the machine was not running"
        )
    std_used = np.maximum(std, p.min_std_ratio * pre.std.astype(np.float64))
    calibrated = model.with_normalization(mean.astype(np.float32), std_used.astype(np.float32))
    wins = Windower(window, hop, pre.columns).push(calibrated.normalize(x), 0)
    scores = np.concatenate(
        [
            calibrated.scores_normalized(wins.data[i : i + SCORE_BATCH])
            for i in range(0, len(wins.data), SCORE_BATCH)
        ]
    )
    if not np.all(np.isfinite(scores)):
        raise CalibrationError(f"{card.name}: calibration windows give non-finite scores")
    if float(scores.max()) >= SATURATED_SCORE:  # a threshold from these would never alarm
        raise CalibrationError(
            f"{card.name}: calibration data holds readings far beyond the rest (more than "
            f"{FAR_SIGMAS:g} standard deviations): calibrate on a stretch of normal operation"
        )
    q = float(np.quantile(scores, p.quantile))
    threshold = q * p.margin
    if not threshold > 0:
        raise CalibrationError(
            f"{card.name}: calibration scores are all zero: no threshold can be fitted"
        )
    return Calibration(
        stream=stream,
        model_name=card.name,
        model_version=card.version,
        model_sha256=card.sha256,
        channels=pre.channels,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std_used),
        threshold=threshold,
        method=p.method,
        n_samples=len(x),
        n_windows=len(scores),
        created=now,
        score_quantile=q,
        params=p,
    )


def threshold_warning(cal: Calibration, card: ModelCard) -> str:
    """Why a fitted threshold deserves a look before it is trusted; "" if it does not."""
    if card.threshold <= 0 or cal.threshold <= SUSPICIOUS_RATIO * card.threshold:
        return ""
    return (
        f"threshold {cal.threshold:.4g} is {cal.threshold / card.threshold:.0f}x the model "
        f"card's {card.threshold:.4g}: the calibration data scored far above the data the "
        "model was built on. Calibrate on normal operation only (no fault, no defective "
        "parts in view); if it was normal, the model may not suit this machine"
    )


def apply_calibration(model: LoadedModel, cal: Calibration) -> LoadedModel:
    """The model normalising with the calibration's statistics (threshold: see policy)."""
    return model.with_normalization(
        np.asarray(cal.mean, dtype=np.float32), np.asarray(cal.std, dtype=np.float32)
    )


def matches_model(cal: Calibration, card: ModelCard) -> bool:
    """A calibration is only valid for the exact model file it was fitted with, or one
    it was carried over to."""
    ok = card.sha256 == cal.model_sha256 or card.sha256 in cal.carried_to
    return ok and cal.channels == card.preprocessing.channels


def carry_over(cal: Calibration, card: ModelCard, window: int) -> str:
    """Why `cal`, in use on a stream cutting `window`-sample windows, cannot serve the
    model of `card` there; "" if it can: the same channels in the same order and the
    same window, so the machine's per-channel statistics still describe what the model
    sees. (The threshold was fitted on the older model's scores: an update's shadow
    judges the candidate with it, and re-calibrating fits it to the new model.)"""
    if cal.channels != card.preprocessing.channels:
        return (
            f"{card.name} reads channels {list(card.preprocessing.channels)}, the calibration "
            f"has {list(cal.channels)}"
        )
    if card.preprocessing.window != window:
        return f"{card.name} takes windows of {card.preprocessing.window}, the stream {window}"
    return ""


def carried(cal: Calibration, card: ModelCard) -> Calibration:
    """`cal`, valid for `card` too (see carry_over)."""
    if matches_model(cal, card):
        return cal
    kept = (*(s for s in cal.carried_to if s != card.sha256), card.sha256)[-CARRIED_KEPT:]
    return replace(cal, carried_to=kept)


# -- storage ----------------------------------------------------------------------


def calibration_path(state_dir: Path, stream: str) -> Path:
    # Stream names are free text: quote so that no name can leave the directory.
    return Path(state_dir) / CALIBRATION_DIR / f"{quote(stream, safe='')}.json"


def save_calibration(state_dir: Path, cal: Calibration) -> Path:
    path = calibration_path(state_dir, cal.stream)
    try:
        atomic_write_json(path, cal.to_json())
    except OSError as e:
        raise CalibrationError(f"{path}: cannot store calibration: {e}") from e
    return path


def load_calibration(state_dir: Path, stream: str) -> Calibration | None:
    """The stored calibration of `stream`, None if there is none.

    A corrupt file raises CalibrationError (callers on the agent's path log it and
    run with the card's values)."""
    path = calibration_path(state_dir, stream)
    try:
        raw = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{path}: unreadable calibration: {e}") from e
    return Calibration.from_json(raw, str(path))


def load_for_model(state_dir: Path, stream: str, card: ModelCard) -> Calibration | None:
    """The stream's calibration if it belongs to this model; warns and returns None if
    it is unreadable or was fitted for another model (a new model needs a new one)."""
    try:
        cal = load_calibration(state_dir, stream)
    except EdgeAgentError as e:
        log.warning("stream %s: ignoring calibration: %s", stream, e)
        return None
    if cal is None:
        return None
    if not matches_model(cal, card):
        log.warning(
            "stream %s: calibration was fitted for %s v%d (sha256 %s...), not the loaded "
            "%s v%d (%s...): ignored; run `edge-agent calibrate` for the new model",
            stream,
            cal.model_name,
            cal.model_version,
            cal.model_sha256[:12],
            card.name,
            card.version,
            card.sha256[:12],
        )
        return None
    return cal


def not_applied_note(state_dir: Path, stream: str, card: ModelCard) -> str:
    """Why a stored calibration of `stream` is not applied to the model of `card`; ""
    if it is, or the stream has none."""
    try:
        cal = load_calibration(state_dir, stream)
    except EdgeAgentError as e:
        return f"stored calibration unusable ({e}): runs on the card's values; re-calibrate"
    if cal is None or matches_model(cal, card):
        return ""
    return (
        f"calibration fitted on {cal.model_name} v{cal.model_version} does not apply to "
        f"{card.name} v{card.version}: this stream runs on the card's normalisation and "
        "threshold; re-calibrate it (edge-agent calibrate)"
    )


def carried_note(cal: Calibration, card: ModelCard) -> str:
    """For status: that `cal` serves `card` carried over from the model it was fitted
    on; "" when `card` is that model."""
    if card.sha256 == cal.model_sha256:
        return ""
    return (
        f"fitted on {cal.model_name} v{cal.model_version}, carried over to {card.name} "
        f"v{card.version} (same channels and window); re-calibrate to fit the threshold "
        "to this model"
    )


class Calibrator:
    """Collects a stream's first samples until enough for `windows` windows (pure)."""

    def __init__(self, window: int, hop: int, windows: int, channels: int) -> None:
        self.needed = samples_needed(window, hop, windows)
        self._buf = np.empty((self.needed, channels), dtype=np.float32)
        self._n = 0

    @property
    def collected(self) -> int:
        return self._n

    @property
    def done(self) -> bool:
        return self._n >= self.needed

    def add(self, samples: npt.NDArray[np.float32]) -> int:
        """Take what is still needed; returns how many of `samples` were taken."""
        k = min(len(samples), self.needed - self._n)
        self._buf[self._n : self._n + k] = samples[:k]
        self._n += k
        return k

    def samples(self) -> npt.NDArray[np.float32]:
        return self._buf[: self._n]
