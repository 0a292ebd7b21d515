"""The committed SKAB models: cards load, files match, golden vectors reproduce on the
real runtimes (onnxruntime, LiteRT); the score kinds they use are checked by hand."""

import numpy as np
import pytest

from edge_agent.errors import ModelError
from edge_agent.profiles import Profile
from edge_agent.runtime.card import card_from_dict, load_card
from edge_agent.runtime.model import load_model, score_outputs
from edge_agent.runtime.registry import runtime_available
from edge_agent.runtime.selection import agreement_ratio, bound_from_card
from tests.agentutil import MODELS

VARIANTS = [
    f"skab-{fam}-{var}"
    for fam in ("ae", "pca", "zsq")
    for var in ("fp32-onnx", "int8-onnx", "int8-tflite")
]


@pytest.mark.parametrize("name", VARIANTS)
def test_card_loads_and_golden_vectors_reproduce(name):
    d = MODELS / name
    card = load_card(d)
    if not runtime_available(card.backend):
        pytest.skip(f"no {card.backend} runtime")
    assert card.preprocessing.window == 10
    assert len(card.preprocessing.channels) == 8
    assert "anomaly-free.csv" in card.raw["training"]["data"]
    model = load_model(d, Profile(name="t"))  # validates golden vectors itself
    assert model.check_golden() <= 1.0
    assert card.path.stat().st_size < 64 * 1024


def test_whole_skab_model_set_is_small():
    total = sum(p.stat().st_size for v in VARIANTS for p in (MODELS / v).iterdir())
    assert total < 1024 * 1024


def test_int8_variants_agree_with_fp32_on_golden_inputs():
    for fam in ("ae", "pca"):
        ref = load_card(MODELS / f"skab-{fam}-fp32-onnx").golden.scores
        for var in ("int8-onnx", "int8-tflite"):
            got = load_card(MODELS / f"skab-{fam}-{var}").golden.scores
            # a sanity bound on quantisation error; the real check is F1 (docs/quality.md)
            assert np.allclose(got, ref, rtol=0.25, atol=0.15), (fam, var)


def test_sum_squares_and_weighted_mse_by_hand():
    y = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 3.0]], np.float32)
    assert score_outputs("sum_squares", y, y).tolist() == [9.0, 9.0]
    x = np.zeros((1, 2, 2), np.float32)
    r = np.array([[[1.0, 3.0], [1.0, 3.0]]], np.float32)
    assert score_outputs("reconstruction_mse", x, r).tolist() == [5.0]
    w = np.array([1.0, 0.0], np.float32)
    assert score_outputs("reconstruction_mse", x, r, w).tolist() == [1.0]


def test_channel_weights_are_checked():
    raw = load_card(MODELS / "skab-ae-fp32-onnx").raw
    bad = {**raw, "score": {**raw["score"], "channel_weights": [1.0] * 7}}
    with pytest.raises(ModelError, match="channel_weights"):
        card_from_dict(bad, MODELS / "skab-ae-fp32-onnx")
    pca = load_card(MODELS / "skab-pca-fp32-onnx").raw
    bad = {**pca, "score": {**pca["score"], "channel_weights": [1.0] * 8}}
    with pytest.raises(ModelError, match="only for reconstruction_mse"):
        card_from_dict(bad, MODELS / "skab-pca-fp32-onnx")


ZSQ_MASK = np.array([1, 1, 1, 1, 0, 1, 1, 1], bool)  # Temperature carries no weight


def _zsq_by_hand(x_norm):
    return np.square(x_norm.astype(np.float64).mean(axis=1)[:, ZSQ_MASK]).sum(axis=1)


def test_zsq_fp32_graph_is_the_sum_of_squared_window_means():
    model = load_model(MODELS / "skab-zsq-fp32-onnx", Profile(name="t"))
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (50, 10, 8)).astype(np.float32)
    x[:5, :, 4] += 40  # Temperature far off: must not move the score
    got = model.scores_normalized(x)
    assert np.allclose(got, _zsq_by_hand(x), rtol=1e-5, atol=1e-5)
    card = model.card
    assert card.score_kind == "output"
    assert card.output.shape == (None, 1)


@pytest.mark.parametrize("variant", ["int8-onnx", "int8-tflite"])
def test_zsq_int8_keeps_a_float_score_within_its_stated_bound(variant):
    d = MODELS / f"skab-zsq-{variant}"
    card = load_card(d)
    if not runtime_available(card.backend):
        pytest.skip(f"no {card.backend} runtime")
    # the final square and sum run in float: the output is not quantised
    assert card.output.dtype == "float32"
    assert card.output.scale is None
    model = load_model(d, Profile(name="t"))
    assert model.backend.output_quant is None
    rng = np.random.default_rng(4)
    # calibrated-normal-like windows, inside the int8 range of +-10 std units
    # (a per-window level, as a drifting machine shows, plus row noise)
    x = (rng.normal(0, 1.5, (400, 1, 8)) + rng.normal(0, 1, (400, 10, 8))).astype(np.float32)
    ref = load_model(MODELS / "skab-zsq-fp32-onnx", Profile(name="t")).scores_normalized(x)
    got = model.scores_normalized(x)
    bound = bound_from_card(card.raw)
    assert bound is not None
    assert agreement_ratio(got, ref, bound) <= 1.0
    # resolution near typical calibrated thresholds (3 to 40): a few percent at most
    near = (ref > 3) & (ref < 40)
    assert near.sum() > 20
    assert np.max(np.abs(got[near] - ref[near]) / ref[near]) < 0.08
    # a fault beyond the int8 range saturates high, it never hides below a threshold
    big = np.zeros((1, 10, 8), np.float32)
    big[:, :, 0] = -30.0
    assert model.scores_normalized(big)[0] >= 0.9 * 100
