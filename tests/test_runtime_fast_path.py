"""The batch-1 runtime path (normalise, model input, backend, scores) gives the bits the
plain formulas give, raises no float warnings on extreme readings, and runs the ONNX
session's compiled `run` only where the wrapper's checks cannot matter (CPU only).

The path was cut down for the serving endpoint's latency (fewer numpy calls, one
RunOptions, errstate as a decorator); these pin what must not change with it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from edge_agent.profiles import Profile
from edge_agent.runtime.model import (
    SATURATED_SCORE,
    LoadedModel,
    far_windows,
    load_model,
    score_outputs,
)

MODELS = Path(__file__).resolve().parent.parent / "models"
PROFILE = Profile(name="t")


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(MODELS / "vibration-ae-fp32-onnx", PROFILE)


def _reference_normalize(m: LoadedModel, raw: np.ndarray) -> np.ndarray:
    """(raw - mean) * (1/std) in float32, channel by channel, with the overflow rule:
    a finite reading that overflows is clipped to +-1e30, a NaN/inf reading stays."""
    mean, inv = m._mean, m._inv_std
    with np.errstate(over="ignore", invalid="ignore"):
        out = (raw.astype(np.float32) - mean).astype(np.float32) * inv
    over = ~np.isfinite(out) & np.isfinite(raw)
    return np.where(over, np.clip(out, -1e30, 1e30), out).astype(np.float32)


def _raws() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    normal = (rng.standard_normal((1, 64, 4)) * 0.5 + [0, 0, 0, 4]).astype(np.float32)
    huge = normal.copy()
    huge[0, 5, 2] = np.float32(3e38)  # overflows when divided by a std below 1
    bad = normal.copy()
    bad[0, 7, 0], bad[0, 9, 3] = np.nan, -np.inf
    far = normal.copy()
    far[0, 1, 1] = 1e6
    many = (rng.standard_normal((7, 64, 4)) * 3).astype(np.float32)
    return [normal, huge, bad, far, many, normal[0], np.asfortranarray(many)]


@pytest.mark.parametrize("case", range(7))
def test_normalize_gives_the_plain_formulas_bits_without_warnings(
    model: LoadedModel, case: int
) -> None:
    raw = _raws()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow warning would be a fault
        got = model.normalize(raw)
        far_windows(got.reshape(-1, 64, 4))
    want = _reference_normalize(model, raw)
    assert got.dtype == np.float32
    assert got.shape == raw.shape
    assert np.array_equal(got, want, equal_nan=True)


def test_one_windows_mse_is_the_dot_of_its_row() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 64, 4)).astype(np.float32)
    y = rng.standard_normal((1, 64, 4)).astype(np.float32)
    d = (x - y).reshape(1, -1)
    want = float(np.dot(d[0], d[0])) / d.shape[1]
    got = score_outputs("reconstruction_mse", x, y)
    assert got.dtype == np.float64
    assert got.shape == (1,)
    assert got[0] == want


def test_scores_equal_the_public_session_runs(model: LoadedModel) -> None:
    for raw in _raws()[:5]:
        x = model.normalize(raw)
        xin, far = model.model_input(x)
        session = model.backend.session  # type: ignore[attr-defined]
        y = session.run(None, {session.get_inputs()[0].name: xin})[0]
        want = score_outputs(model.card.score_kind, xin, y)
        if far is not None:
            want = np.where(far, SATURATED_SCORE, want)
        assert np.array_equal(model.scores(raw), want, equal_nan=True)


def test_the_compiled_run_is_used_on_cpu_only_and_follows_a_rebind(model: LoadedModel) -> None:
    be = model.backend
    x = model.normalize(_raws()[0])
    before = be.infer(x)
    assert be._session_run == be.session._sess.run  # type: ignore[attr-defined]
    be.unbind()
    assert np.array_equal(be.infer(x), before), "unbound: reopened on CPU from its bytes"
    be.bind(["CPUExecutionProvider"])
    assert be._session_run == be.session._sess.run  # type: ignore[attr-defined]
    assert np.array_equal(be.infer(x), before)
