"""Model cards (`models/<name>/model.json`): what a model is, expects and promises.

The card is the contract between the model build, the device and OTA: file hash,
input/output tensors with quantisation, preprocessing, score function, threshold,
alarm policy defaults and golden vectors that must reproduce on the device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ModelError
from edge_agent.fsutil import sha256_file

__all__ = [
    "CARD_FILE",
    "AlarmDefaults",
    "Golden",
    "ModelCard",
    "Preprocessing",
    "TensorSpec",
    "load_card",
    "sha256_file",
]

CARD_FILE = "model.json"
# reconstruction_mse: mean squared error of the reconstruction (optionally weighted per
#   channel by score.channel_weights); output: the model's first output value;
# sum_squares: sum of the squared outputs (a graph that emits pre-scaled statistics,
#   e.g. whitened PCA scores and residuals, so the sum is T-squared/k + Q/Q_ref).
SCORE_KINDS = ("reconstruction_mse", "output", "sum_squares")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None


@dataclass(frozen=True)
class Preprocessing:
    window: int
    hop: int
    channels: tuple[str, ...]
    rate_hz: float
    mean: npt.NDArray[np.float32]
    std: npt.NDArray[np.float32]
    # An image model's one channel is a whole frame: (height, width) grayscale pixels,
    # flattened row-major, so each sample has height*width columns. None: one column
    # per channel (signals).
    frame: tuple[int, int] | None = None

    @property
    def columns(self) -> int:
        """Values per sample: one per channel, or a frame's pixels for an image model."""
        if self.frame is None:
            return len(self.channels)
        return self.frame[0] * self.frame[1]


@dataclass(frozen=True)
class AlarmDefaults:
    min_on: int = 2
    min_off: int = 3
    hysteresis: float = 0.8


@dataclass(frozen=True)
class Golden:
    inputs: npt.NDArray[np.float32]  # raw windows, before normalisation: (n, window, columns)
    scores: npt.NDArray[np.float64]
    atol: float
    rtol: float


@dataclass(frozen=True)
class ModelCard:
    directory: Path
    name: str
    family: str
    version: int
    label: str
    backend: str
    file: str
    sha256: str
    precision: str
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    score_kind: str
    threshold: float
    alarm: AlarmDefaults
    golden: Golden
    # per-channel weights of reconstruction_mse (None: all channels count equally)
    score_weights: npt.NDArray[np.float32] | None = None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / self.file


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ModelError(f"{where}: missing key {key!r}")
    v = d[key]
    if not isinstance(v, typ) or (isinstance(v, bool) and typ in (int, float)):
        raise ModelError(f"{where}.{key}: expected {typ}, got {type(v).__name__}")
    return v


def _tensor(d: dict[str, Any], where: str) -> TensorSpec:
    shape = _get(d, "shape", list, where)
    scale = d.get("scale")
    zp = d.get("zero_point")
    return TensorSpec(
        name=_get(d, "name", str, where),
        shape=tuple(None if s is None or s < 0 else int(s) for s in shape),
        dtype=_get(d, "dtype", str, where),
        scale=None if scale is None else float(scale),
        zero_point=None if zp is None else int(zp),
    )


def _score_weights(
    score: dict[str, Any], n_channels: int, where: str
) -> npt.NDArray[np.float32] | None:
    if "channel_weights" not in score:
        return None
    wts = np.asarray(_get(score, "channel_weights", list, where), dtype=np.float32)
    if wts.shape != (n_channels,) or not np.all(np.isfinite(wts)) or np.any(wts < 0):
        raise ModelError(f"{where}.channel_weights: {n_channels} finite values >= 0 expected")
    if score["kind"] != "reconstruction_mse" or not wts.sum() > 0:
        raise ModelError(f"{where}.channel_weights: only for reconstruction_mse, not all zero")
    return wts


def _frame(pre: dict[str, Any], n_channels: int, where: str) -> tuple[int, int] | None:
    if "frame" not in pre:
        return None
    f = _get(pre, "frame", dict, where)
    h, w = _get(f, "height", int, f"{where}.frame"), _get(f, "width", int, f"{where}.frame")
    if h <= 0 or w <= 0:
        raise ModelError(f"{where}.frame: height and width must be positive")
    if n_channels != 1:
        raise ModelError(f"{where}.frame: an image model has exactly one channel (the frame)")
    return int(h), int(w)


def card_from_dict(raw: dict[str, Any], directory: Path) -> ModelCard:
    w = f"{directory / CARD_FILE}"
    pre = _get(raw, "preprocessing", dict, w)
    pw = f"{w}: preprocessing"
    channels = tuple(_get(pre, "channels", list, pw))
    mean = np.asarray(_get(pre, "mean", list, pw), dtype=np.float32)
    std = np.asarray(_get(pre, "std", list, pw), dtype=np.float32)
    if mean.shape != (len(channels),) or std.shape != (len(channels),):
        raise ModelError(f"{pw}: mean/std must have one value per channel ({len(channels)})")
    if not np.all(np.isfinite(std)) or np.any(std <= 0):
        raise ModelError(f"{pw}.std: every value must be finite and > 0")
    window, hop = int(_get(pre, "window", int, pw)), int(_get(pre, "hop", int, pw))
    if window <= 0 or hop <= 0:
        raise ModelError(f"{pw}: window and hop must be positive")
    frame = _frame(pre, len(channels), pw)
    prep = Preprocessing(window, hop, channels, float(pre.get("rate_hz", 0.0)), mean, std, frame)
    score = _get(raw, "score", dict, w)
    kind = _get(score, "kind", str, f"{w}: score")
    if kind not in SCORE_KINDS:
        raise ModelError(f"{w}: score.kind {kind!r} unknown (expected one of {SCORE_KINDS})")
    weights = _score_weights(score, len(channels), f"{w}: score")
    if weights is not None and frame is not None:
        raise ModelError(f"{w}: score.channel_weights: not for an image model (one channel)")
    thr = _get(raw, "threshold", dict, w)
    g = _get(raw, "golden", dict, w)
    gw = f"{w}: golden"
    inputs = np.asarray(_get(g, "inputs", list, gw), dtype=np.float32)
    scores = np.asarray(_get(g, "scores", list, gw), dtype=np.float64)
    if inputs.ndim != 3 or inputs.shape[1:] != (window, prep.columns):
        raise ModelError(f"{gw}.inputs: expected shape (n, {window}, {prep.columns})")
    if scores.shape != (inputs.shape[0],):
        raise ModelError(f"{gw}.scores: expected one score per input")
    al = raw.get("alarm", {})
    version = _get(raw, "version", int, w)
    if version < 0:
        raise ModelError(f"{w}.version: must be >= 0")
    return ModelCard(
        directory=directory,
        name=_get(raw, "name", str, w),
        family=str(raw.get("family", raw["name"])),
        version=version,
        label=str(raw.get("label", "")),
        backend=_get(raw, "backend", str, w),
        file=_get(raw, "file", str, w),
        sha256=_get(raw, "sha256", str, w),
        precision=str(raw.get("precision", "fp32")),
        input=_tensor(_get(raw, "input", dict, w), f"{w}: input"),
        output=_tensor(_get(raw, "output", dict, w), f"{w}: output"),
        preprocessing=prep,
        score_kind=kind,
        threshold=float(_get(thr, "value", (int, float), f"{w}: threshold")),
        alarm=AlarmDefaults(
            min_on=int(al.get("min_on", 2)),
            min_off=int(al.get("min_off", 3)),
            hysteresis=float(al.get("hysteresis", 0.8)),
        ),
        golden=Golden(inputs, scores, float(g.get("atol", 1e-4)), float(g.get("rtol", 1e-3))),
        score_weights=weights,
        raw=raw,
    )


def load_card(directory: Path, *, verify_hash: bool = True) -> ModelCard:
    """Read and check a card; with verify_hash the model file must match its sha256."""
    directory = Path(directory)
    p = directory / CARD_FILE
    try:
        raw = json.loads(p.read_bytes())
    except FileNotFoundError as e:
        raise ModelError(f"{p}: no model card (is {directory} a model directory?)") from e
    except (OSError, ValueError) as e:
        raise ModelError(f"{p}: unreadable model card: {e}") from e
    if not isinstance(raw, dict):
        raise ModelError(f"{p}: a model card must be a JSON object")
    card = card_from_dict(raw, directory)
    if verify_hash:
        try:
            digest = sha256_file(card.path)
        except FileNotFoundError as e:
            raise ModelError(f"{card.path}: model file missing (named by {p})") from e
        if digest != card.sha256:
            raise ModelError(
                f"{card.path}: sha256 {digest[:12]}... does not match the card's "
                f"{card.sha256[:12]}...: the file is corrupt or was replaced"
            )
    return card
