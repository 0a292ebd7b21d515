"""A loaded model: card + backend + the score function, and how to find one by name.

`scores(raw_windows)` is the whole device path for a batch of windows: normalise with
the card's statistics, infer, score. Golden vectors go through exactly this path.

More abnormal is never quieter. A reading far beyond anything in normal data (more than
FAR_SIGMAS standard deviations, or so large that normalising it overflows float32) is
outside what any bundled model can measure: int8 inputs saturate (a 1e6 reading looks
like a 17-sigma one, and some graphs then score it below normal), float32 arithmetic
overflows to inf/NaN. Such a window scores SATURATED_SCORE, whatever the model says.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.errors import BudgetExceededError, ModelError
from edge_agent.profiles import Profile
from edge_agent.quiet_math import overflow_quiet, sum_squares
from edge_agent.resources import find_resource_dir
from edge_agent.runtime.backend import Backend
from edge_agent.runtime.card import CARD_FILE, ModelCard, load_card
from edge_agent.runtime.registry import backend_class, runtime_available

__all__ = [
    "FAR_SIGMAS",
    "SATURATED_SCORE",
    "LoadedModel",
    "far_windows",
    "find_models",
    "load_model",
    "resolve_model_dir",
    "score_outputs",
]

log = logging.getLogger(__name__)

DEFAULT_PROFILE = Profile(name="default")
_TILE_SIZES_KEPT = 4  # normalisation tiles per model (one per block / batch shape in use)

# Normal data stays within ~6 standard deviations (SKAB's anomaly-free runs: 5.4; the
# synthetic vibration signal: 8.6 with its anomalies); real process anomalies reach ~130
# (SKAB's valve runs), and the models score those themselves. 1,000 is beyond all of it.
FAR_SIGMAS = 1000.0
# The score of a window beyond the model's range: above any threshold, finite (JSON has
# no inf), and summable over millions of windows without overflowing telemetry means.
SATURATED_SCORE = 1e300
# Where normalised values that overflowed float32 are clipped: finite, so the windower
# does not take them for NaN/inf sensor readings, and far beyond FAR_SIGMAS.
_CLIP_SIGMAS = np.float32(1e30)


_FAR_SQUARED = FAR_SIGMAS**2


@overflow_quiet
def _scaled(
    raw: npt.NDArray[np.float32], mean: npt.NDArray[np.float32], inv: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], float]:
    """((raw - mean) * inv in float32, the sum of its squares): normalize's arithmetic.
    Overflow (float32 max / a small std) shows in the sum and is clipped by the caller."""
    out: npt.NDArray[np.float32] = np.subtract(raw, mean, dtype=np.float32)
    out *= inv
    flat = out if out.ndim == 1 else out.reshape(-1)
    return out, float(np.dot(flat, flat))


def far_windows(x_norm: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_] | None:
    """Which normalised windows (n, ...) hold a value beyond +-FAR_SIGMAS; None when
    none does (pure). NaN is not far: an invalid reading is sensor health's, and the
    pipeline never scores it."""
    if not len(x_norm) or sum_squares(x_norm) <= _FAR_SQUARED:
        return None  # every |value| <= sqrt(sum of squares) <= FAR_SIGMAS: the usual case
    far: npt.NDArray[np.bool_] = np.abs(x_norm).reshape(len(x_norm), -1).max(axis=1) > FAR_SIGMAS
    return far if far.any() else None


def _clip_overflow(
    x: npt.NDArray[np.float32], raw: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Normalised `x` with the values that overflowed to +-inf from a finite raw reading
    (float32 max with a std below 1) clipped to +-_CLIP_SIGMAS. A raw NaN/inf stays: that
    is an invalid reading, for sensor health, not a measurement."""
    over = ~np.isfinite(x) & np.isfinite(raw)
    if not over.any():
        return x
    out: npt.NDArray[np.float32] = np.where(over, np.clip(x, -_CLIP_SIGMAS, _CLIP_SIGMAS), x)
    return out


def score_outputs(
    kind: str,
    x_norm: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float64]:
    """Per-window anomaly score from the model output (pure).

    `weights` (per channel, last axis) turn reconstruction_mse into a weighted mean."""
    if kind == "reconstruction_mse" and weights is not None:
        d2 = np.square(x_norm - y, dtype=np.float64) * weights
        wmse: npt.NDArray[np.float64] = d2.reshape(len(y), -1).sum(axis=1) / (
            float(weights.sum()) * (d2[0].size // len(weights))
        )
        return wmse
    if kind == "sum_squares":
        flat = y.reshape(len(y), -1)
        ss: npt.NDArray[np.float64] = np.einsum("ij,ij->i", flat, flat, dtype=np.float64)
        return ss
    if kind == "reconstruction_mse":
        # float32 throughout (relative error ~1e-7, far inside golden tolerances): half the
        # cost of accumulating in float64 on the hot path.
        diff = x_norm - y
        if len(diff) == 1:  # a live stream's usual batch: one BLAS dot beats einsum's setup
            row = diff.reshape(-1)
            return np.array([float(np.dot(row, row)) / row.size])
        d = diff.reshape(len(y), -1)
        mse: npt.NDArray[np.float64] = np.einsum("ij,ij->i", d, d).astype(np.float64) / d.shape[1]
        return mse
    if kind == "output":
        return y.reshape(len(y), -1)[:, 0].astype(np.float64)
    raise ModelError(f"unknown score kind {kind!r}")


class LoadedModel:
    def __init__(self, card: ModelCard, backend: Backend) -> None:
        self.card = card
        self.backend = backend
        pre = card.preprocessing
        self._mean = pre.mean.astype(np.float32)
        self._inv_std = (1.0 / pre.std).astype(np.float32)
        self._tiles: dict[int, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = {}

    def _tiled(self, size: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """mean and 1/std repeated over `size` values (a flattened block). numpy then runs
        one flat loop instead of a tiny broadcast loop of 4 channels per sample: 25 -> 4 us
        for a 1,024-sample block, same bits. A few sizes are kept (block, batch shapes)."""
        t = self._tiles.get(size)
        if t is None:
            if len(self._tiles) >= _TILE_SIZES_KEPT:
                self._tiles.clear()
            reps = size // len(self._mean)
            t = (np.tile(self._mean, reps), np.tile(self._inv_std, reps))
            self._tiles[size] = t
        return t

    def with_normalization(
        self, mean: npt.NDArray[np.float32], std: npt.NDArray[np.float32]
    ) -> LoadedModel:
        """The same model (shared backend, card untouched) normalising with other
        per-channel statistics, e.g. an on-site calibration's."""
        n = len(self.card.preprocessing.channels)
        m = np.asarray(mean, dtype=np.float32)
        s = np.asarray(std, dtype=np.float32)
        if m.shape != (n,) or s.shape != (n,) or not np.all(np.isfinite(m)):
            raise ModelError(f"{self.card.name}: normalisation needs {n} finite means and stds")
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ModelError(f"{self.card.name}: every normalisation std must be finite and > 0")
        out = LoadedModel(self.card, self.backend)
        out._mean = m.copy()
        out._inv_std = (1.0 / s).astype(np.float32)
        return out

    @property
    def norm_stats(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(mean, std) per channel used by normalize()."""
        return self._mean, (1.0 / self._inv_std).astype(np.float32)

    def normalize(self, raw: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(x - mean) / std per channel, float32; a finite reading never becomes inf."""
        c = len(self._mean)
        if c > 1 and raw.ndim >= 2 and raw.shape[-1] == c and raw.flags.c_contiguous:
            mean, inv = self._tiled(raw.size)
            flat, ss = _scaled(raw.reshape(-1), mean, inv)
            out = flat.reshape(raw.shape)
        else:
            out, ss = _scaled(raw, self._mean, self._inv_std)
        # one BLAS dot found any overflow (the usual case: none)
        return out if math.isfinite(ss) else _clip_overflow(out, raw)

    def denormalize(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = x / self._inv_std + self._mean
        return out

    def scores(self, raw_windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Raw windows (n, window, channels) -> one score per window."""
        return self.scores_normalized(self.normalize(raw_windows))

    def scores_normalized(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Normalised windows (n, window, columns) -> one score per window; a window
        beyond the model's range (see far_windows) scores SATURATED_SCORE."""
        x, far = self.model_input(x)
        return self.scores_from_output(x, self.backend.infer(x), far)

    def model_input(
        self, x: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None]:
        """Normalised windows -> (what the backend gets, which are beyond range or None).
        The two halves of scores_normalized, for callers that batch several inputs into
        one backend call (the inference scheduler)."""
        far = far_windows(x)
        if far is None:
            return x, None
        # Clipped just past the limit, the model's arithmetic stays finite (no overflow
        # warnings); those windows' scores are replaced anyway.
        return np.clip(x, -2 * FAR_SIGMAS, 2 * FAR_SIGMAS).astype(np.float32), far

    def scores_from_output(
        self,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.float32],
        far: npt.NDArray[np.bool_] | None,
    ) -> npt.NDArray[np.float64]:
        """(model input, backend output, far mask from model_input) -> one score per window."""
        s = score_outputs(self.card.score_kind, x, y, self.card.score_weights)
        if far is None:
            return s
        out: npt.NDArray[np.float64] = np.where(far, SATURATED_SCORE, s)
        return out

    def check_golden(self) -> float:
        """Run the card's golden vectors; ModelError if they do not reproduce.

        Returns the worst |error| / allowed ratio (<= 1 passes)."""
        g = self.card.golden
        got = self.scores(g.inputs)
        if not np.all(np.isfinite(got)):
            raise ModelError(f"{self.card.name}: golden vectors give non-finite scores")
        allowed = g.atol + g.rtol * np.abs(g.scores)
        ratio = float(np.max(np.abs(got - g.scores) / allowed))
        if ratio > 1.0:
            i = int(np.argmax(np.abs(got - g.scores) / allowed))
            raise ModelError(
                f"{self.card.name}: golden vector {i} scores {got[i]:.6g}, card expects "
                f"{g.scores[i]:.6g} (atol {g.atol}, rtol {g.rtol}): model or runtime differs"
            )
        return ratio

    @property
    def description(self) -> str:
        c = self.card
        return f"{c.name} v{c.version} ({c.precision}, {self.backend.key})"


def load_model(
    directory: Path | str,
    profile: Profile | None = None,
    *,
    validate: bool = True,
    card: ModelCard | None = None,
) -> LoadedModel:
    """Verify the file hash, load on the card's backend, warm up, check golden vectors."""
    card = card or load_card(Path(directory))
    prof = profile or DEFAULT_PROFILE
    size_mb = card.path.stat().st_size / 2**20
    if size_mb > prof.model_memory_mb:
        raise BudgetExceededError(
            f"{card.name}: {size_mb:.1f} MB model exceeds profile {prof.name}'s "
            f"{prof.model_memory_mb} MB model budget"
        )
    backend = backend_class(card.backend)(card, prof)
    backend.load()
    model = LoadedModel(card, backend)
    if validate:
        model.check_golden()
    return model


def find_models(models_dir: Path) -> list[ModelCard]:
    """Cards of every model directory under `models_dir` (hashes not checked here)."""
    cards = []
    for d in sorted(p.parent for p in models_dir.glob(f"*/{CARD_FILE}")):
        try:
            cards.append(load_card(d, verify_hash=False))
        except ModelError as e:
            log.warning("skipping %s: %s", d, e)
    return cards


@dataclass(frozen=True)
class _Variant:
    """What resolving a stream's model needs of a card (a whole card holds its golden
    vectors, raw and parsed: ~0.1 MB each, 1.6 MB for the 15 demo cards if kept)."""

    directory: Path
    family: str
    precision: str
    backend: str

    @staticmethod
    def of(c: ModelCard) -> _Variant:
        return _Variant(c.directory, c.family, c.precision, c.backend)


# Variants read from cards (checked, hashes not), by card file, while the file is
# unchanged: every stream resolves its model by family, and each read parses every
# variant's golden vectors (64 streams x 15 cards took seconds of start-up).
_VARIANTS: dict[Path, tuple[tuple[int, int], _Variant]] = {}


def _variant(d: Path) -> _Variant:
    f = d / CARD_FILE
    try:
        st = f.stat()
        key = (st.st_mtime_ns, st.st_size)
    except OSError:
        return _Variant.of(load_card(d, verify_hash=False))  # says what is wrong
    hit = _VARIANTS.get(f)
    if hit is not None and hit[0] == key:
        return hit[1]
    v = _Variant.of(load_card(d, verify_hash=False))
    _VARIANTS[f] = (key, v)
    return v


def _variants(models_dir: Path) -> list[_Variant]:
    out = []
    for d in sorted(p.parent for p in models_dir.glob(f"*/{CARD_FILE}")):
        try:
            out.append(_variant(d))
        except ModelError as e:
            log.warning("skipping %s: %s", d, e)
    return out


def resolve_model_dir(
    name: str,
    variant: str,
    profile: Profile,
    models_dir: Path | None = None,
    state_dir: Path | None = None,
) -> Path:
    """A stream's `model` setting -> one model directory.

    `name` may be a path (a model directory, or a directory of one family's variants),
    a model directory name, or a family; for a family, `variant`
    ("int8-onnx", ...) picks the variant; "auto" takes the choice measured on this
    device (`edge-agent bench --select`, recorded in `state_dir`) when there is one,
    else the profile's precision and backend order, skipping backends whose runtime
    is not installed."""
    p = Path(name)
    if (p / CARD_FILE).is_file():
        return p
    base = models_dir or find_resource_dir("models")
    if p.is_dir() and any(p.glob(f"*/{CARD_FILE}")):
        # a directory of one family's variants (what `edge-agent model new --out` writes)
        fams = sorted({c.family for c in _variants(p)})
        if len(fams) != 1:
            raise ModelError(f"model {name!r}: holds families {fams}; name one of its variants")
        name, base = fams[0], p
    if base is None:
        raise ModelError(f"model {name!r}: no models directory found (set models_dir)")
    if (base / name / CARD_FILE).is_file():
        return base / name
    family = [c for c in _variants(base) if c.family == name]
    if not family:
        raise ModelError(f"model {name!r}: not found in {base} (neither a directory nor a family)")
    if variant != "auto":
        return _named_variant(name, family, variant)
    chosen = _measured_choice(name, family, state_dir) or _profile_choice(family, profile)
    if chosen is not None:
        return chosen
    have = ", ".join(sorted(f"{c.precision}-{c.backend}" for c in family))
    raise ModelError(
        f"model {name!r}: no variant fits profile {profile.name} "
        f"(precision {profile.precision}, backends {profile.backends}); have: {have}"
    )


def _profile_choice(family: list[_Variant], profile: Profile) -> Path | None:
    """The first variant in the profile's precision, then backend, order whose runtime
    is installed."""
    for prec in profile.precision:
        for be in profile.backends:
            if not runtime_available(be):
                continue
            for c in family:
                if c.precision == prec and c.backend == be:
                    return c.directory
    return None


def _named_variant(name: str, family: list[_Variant], variant: str) -> Path:
    for c in family:
        if f"{c.precision}-{c.backend}" == variant:
            return c.directory
    have = ", ".join(sorted(f"{c.precision}-{c.backend}" for c in family))
    raise ModelError(f"model {name!r}: no variant {variant!r} (have: {have})")


def _measured_choice(family: str, cards: list[_Variant], state_dir: Path | None) -> Path | None:
    """The variant `bench --select` recorded for `family`, if it is still installed."""
    if state_dir is None:
        return None
    from edge_agent.runtime.selection import selected_variant

    chosen = selected_variant(state_dir, family)
    if chosen is None:
        return None
    for c in cards:
        if f"{c.precision}-{c.backend}" == chosen and runtime_available(c.backend):
            log.info("model %s: variant %s, as measured by bench --select", family, chosen)
            return c.directory
    log.warning(
        "model %s: recorded choice %s is not installed or has no runtime; using the profile",
        family,
        chosen,
    )
    return None
