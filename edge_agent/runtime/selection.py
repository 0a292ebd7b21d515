"""The device's measured choice of model variant, per family (`edge-agent bench --select`).

Pure part: `choose_variant` takes measured candidates and applies the tolerance rule;
`agreement_ratio` compares scores with the reference's under a card's stated bound.
I/O part: the choice is kept in `<state_dir>/selected_variants.json` (atomic writes)
and `resolve_model_dir` reads it back for streams whose variant is "auto".

Tolerance rule: the fp32 reference (the model the cards' `agreement` is stated against)
is always eligible; any other variant is eligible only if its golden vectors reproduce
on this device and every measured score lies within its card's agreement bound
(|score - ref_score| <= atol + rtol * |ref_score|). A variant whose card states no
bound is not eligible: nothing says how far it may drift. The fastest eligible
variant (pipeline time per window on this device) wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ModelError, StateError
from edge_agent.fsutil import atomic_write_json, read_json

__all__ = [
    "SELECTED_FILE",
    "AgreementBound",
    "Candidate",
    "Choice",
    "agreement_ratio",
    "bound_from_card",
    "choose_variant",
    "read_selected",
    "selected_variant",
    "write_selected",
]

log = logging.getLogger(__name__)

SELECTED_FILE = "selected_variants.json"


@dataclass(frozen=True)
class AgreementBound:
    atol: float
    rtol: float


def bound_from_card(raw: dict[str, Any]) -> AgreementBound | None:
    """The card's `agreement.bound` (vs the fp32 reference), or None if it states none."""
    agr = raw.get("agreement")
    bound = agr.get("bound") if isinstance(agr, dict) else None
    if not isinstance(bound, dict):
        return None
    try:
        atol, rtol = float(bound["atol"]), float(bound["rtol"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"card agreement.bound: expected numbers atol and rtol ({e})") from e
    if atol < 0 or rtol < 0:
        raise ModelError("card agreement.bound: atol and rtol must be >= 0")
    return AgreementBound(atol, rtol)


def agreement_ratio(
    scores: npt.NDArray[np.float64], reference: npt.NDArray[np.float64], bound: AgreementBound
) -> float:
    """Worst |score - ref| / (atol + rtol * |ref|) over all windows; <= 1 agrees."""
    if scores.shape != reference.shape or scores.size == 0:
        raise ModelError(f"agreement: shapes {scores.shape} and {reference.shape} differ or empty")
    allowed = bound.atol + bound.rtol * np.abs(reference)
    diff = np.abs(scores - reference)
    if not np.all(np.isfinite(diff)):
        return float("inf")
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(diff == 0, 0.0, diff / allowed)
    return float(np.max(r))


@dataclass(frozen=True)
class Candidate:
    variant: str  # "<precision>-<backend>", e.g. "int8-onnx"
    model: str  # model directory name
    us_per_window: float  # median pipeline time per window on this device
    reference: bool  # the fp32 model the agreement bounds are stated against
    golden_ok: bool
    agreement: float | None  # agreement_ratio vs the reference; None: card states no bound

    def rejection(self) -> str | None:
        """Why this candidate may not be chosen, or None if it may."""
        if not self.golden_ok:
            return "golden vectors do not reproduce on this device"
        if self.reference:
            return None
        if self.agreement is None:
            return "card states no agreement bound vs the fp32 reference"
        if not self.agreement <= 1.0:
            return f"scores outside the card's agreement bound ({self.agreement:.2f}x allowed)"
        return None


@dataclass(frozen=True)
class Choice:
    family: str
    variant: str
    model: str
    us_per_window: float
    reason: str
    rejected: tuple[tuple[str, str], ...]  # (variant, why)

    def to_json(self, measured_at: float) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "model": self.model,
            "us_per_window": self.us_per_window,
            "reason": self.reason,
            "rejected": dict(self.rejected),
            "measured_at": measured_at,
        }


def choose_variant(family: str, candidates: list[Candidate]) -> Choice:
    """The fastest candidate within tolerance (module doc); ModelError if none is."""
    ok = [c for c in candidates if c.rejection() is None]
    rejected = tuple((c.variant, r) for c in candidates if (r := c.rejection()) is not None)
    if not ok:
        why = "; ".join(f"{v}: {r}" for v, r in rejected) or "no variants measured"
        raise ModelError(f"{family}: no variant is within tolerance ({why})")
    best = min(ok, key=lambda c: (c.us_per_window, c.variant))
    others = [c for c in ok if c is not best]
    if others:
        nxt = min(others, key=lambda c: c.us_per_window)
        reason = (
            f"fastest within tolerance: {best.us_per_window:.1f} us/window vs "
            f"{nxt.variant} {nxt.us_per_window:.1f}"
        )
    else:
        reason = f"only variant within tolerance ({best.us_per_window:.1f} us/window)"
    return Choice(family, best.variant, best.model, best.us_per_window, reason, rejected)


def read_selected(state_dir: Path) -> dict[str, dict[str, Any]]:
    """family -> recorded choice; {} when nothing was recorded or the file is unreadable."""
    p = Path(state_dir) / SELECTED_FILE
    try:
        data = read_json(p)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring %s: %s", p, e)
        return {}
    fams = data.get("families") if isinstance(data, dict) else None
    if not isinstance(fams, dict):
        log.warning("ignoring %s: no 'families' object", p)
        return {}
    return {k: v for k, v in fams.items() if isinstance(v, dict)}


def selected_variant(state_dir: Path, family: str) -> str | None:
    v = read_selected(state_dir).get(family, {}).get("variant")
    return v if isinstance(v, str) else None


def write_selected(state_dir: Path, choice: Choice, measured_at: float) -> Path:
    """Record `choice` for its family, keeping other families' choices."""
    fams = read_selected(state_dir)
    fams[choice.family] = choice.to_json(measured_at)
    p = Path(state_dir) / SELECTED_FILE
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(p, {"v": 1, "families": fams})
    except OSError as e:
        raise StateError(
            f"{p}: cannot record the choice: {e.strerror or e} (use --state-dir)"
        ) from e
    return p
