"""Every committed model card keeps its promises, checked with the real runtimes.

For each `models/*/model.json`: the card loads and the file matches its sha256; the golden
vectors reproduce within the card's tolerance through the product path (`load_model`)
and through an independent reference of the same math (normalise, quantise, infer,
dequantise, MSE) written directly against onnxruntime / LiteRT; int8 variants agree with
fp32 within their stated bound; a corrupted model file is refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.errors import ModelError
from edge_agent.runtime.card import ModelCard, load_card
from edge_agent.runtime.model import load_model

MODELS = Path(__file__).resolve().parents[1] / "models"
# the demo family; the SKAB models have their own tests (tests/test_skab_models.py)
MODEL_DIRS = sorted(p.parent for p in MODELS.glob("vibration-ae-*/model.json"))
FP32_REFERENCE = MODELS / "vibration-ae-fp32-onnx"

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def _has_litert() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def _params(dirs: list[Path]) -> list[Any]:
    out = []
    for d in dirs:
        marks: list[Any] = []
        if d.name.endswith("tflite"):
            marks.append(pytest.mark.tflite)
            if not _has_litert():
                marks.append(pytest.mark.skip(reason="ai-edge-litert not installed"))
        out.append(pytest.param(d, id=d.name, marks=marks))
    return out


def reference_scores(card: ModelCard, raw: F32) -> F64:
    """The card's score, computed without edge_agent's runtime: numpy + the bare runtime."""
    pre = card.preprocessing
    xn = ((raw.astype(np.float32) - pre.mean) / pre.std).astype(np.float32)
    if card.backend == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(card.path), providers=["CPUExecutionProvider"])
        (recon,) = sess.run([card.output.name], {card.input.name: xn})
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(card.path), num_threads=1)
        ind, outd = it.get_input_details()[0], it.get_output_details()[0]
        (si, zi), (so, zo) = ind["quantization"], outd["quantization"]
        # the card repeats the tensor details' quantisation; the device trusts the details
        assert (si, zi) == (card.input.scale, card.input.zero_point)
        assert (so, zo) == (card.output.scale, card.output.zero_point)
        it.resize_tensor_input(ind["index"], list(xn.shape), strict=True)
        it.allocate_tensors()
        q = np.clip(np.rint(xn / np.float32(si)) + zi, -128, 127).astype(np.int8)
        it.set_tensor(ind["index"], q)
        it.invoke()
        recon = (it.get_tensor(outd["index"]).astype(np.float32) - zo) * np.float32(so)
    d = xn.astype(np.float64) - np.asarray(recon, np.float64)
    return np.asarray(np.mean(d * d, axis=(1, 2)), np.float64)


def within(got: F64, want: F64, atol: float, rtol: float) -> bool:
    return bool(np.all(np.abs(got - want) <= atol + rtol * np.abs(want)))


def test_models_directory_holds_the_three_demo_variants() -> None:
    names = {d.name for d in MODEL_DIRS}
    assert {
        "vibration-ae-fp32-onnx",
        "vibration-ae-int8-onnx",
        "vibration-ae-int8-tflite",
    } <= names
    # The repository and the .deb carry every family (the wheel only the demo's): keep
    # the lot small. 1.36 MB now (demo 0.40, SKAB 0.24, inspection 0.71 MB).
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert total < 1_500_000, f"committed model artifacts grew to {total} bytes"


@pytest.mark.parametrize("d", _params(MODEL_DIRS))
def test_card_loads_and_names_its_directory(d: Path) -> None:
    card = load_card(d)  # verifies sha256
    assert card.name == d.name
    assert card.family == "vibration-ae"
    assert card.backend in ("onnx", "tflite")
    assert card.precision in ("fp32", "int8")
    assert card.golden.inputs.shape[0] >= 6
    assert card.threshold > 0
    assert (d / "MODEL_CARD.md").is_file()
    if card.precision == "int8" and card.backend == "tflite":
        assert card.input.dtype == "int8"
        assert card.input.scale is not None
        assert card.input.zero_point is not None


@pytest.mark.parametrize("d", _params(MODEL_DIRS))
def test_golden_vectors_reproduce_on_the_real_runtime(d: Path) -> None:
    card = load_card(d)
    g = card.golden
    product = load_model(d, validate=False).scores(g.inputs)
    reference = reference_scores(card, g.inputs)
    assert within(product, g.scores, g.atol, g.rtol), (product, g.scores)
    assert within(reference, g.scores, g.atol, g.rtol), (reference, g.scores)
    # product path and reference math are the same computation, not merely both close
    assert within(product, reference, 1e-9, g.rtol / 4)


@pytest.mark.parametrize("d", _params(MODEL_DIRS))
def test_golden_vectors_straddle_the_threshold(d: Path) -> None:
    """The golden set carries normal and anomalous windows, so it checks decisions too."""
    card = load_card(d)
    kinds = card.raw["golden"]["kinds"]
    above = card.golden.scores > card.threshold
    assert [k != "normal" for k in kinds] == above.tolist()


@pytest.mark.parametrize(
    "d", _params([d for d in MODEL_DIRS if load_card(d, verify_hash=False).precision != "fp32"])
)
def test_int8_scores_agree_with_fp32_within_the_stated_bound(d: Path) -> None:
    card = load_card(d)
    bound = card.raw["agreement"]["bound"]
    fp32 = load_model(FP32_REFERENCE, validate=False)
    raw = card.golden.inputs
    got = load_model(d, validate=False).scores(raw)
    ref = fp32.scores(raw)
    assert within(got, ref, bound["atol"], bound["rtol"]), (got, ref, bound)
    # and the windows fp32 calls normal stay tight: the loose rtol is for saturated anomalies
    normal = ref <= fp32.card.threshold
    assert normal.any()
    assert np.all(np.abs(got[normal] - ref[normal]) <= bound["atol"])


@pytest.mark.parametrize("d", _params(MODEL_DIRS))
def test_corrupted_model_file_is_refused(d: Path, tmp_path: Path) -> None:
    copy = tmp_path / d.name
    shutil.copytree(d, copy)
    card = load_card(copy)
    blob = bytearray(card.path.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one flipped bit in the weights
    card.path.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256"):
        load_card(copy)
    with pytest.raises(ModelError, match="sha256"):
        load_model(copy)


@pytest.mark.parametrize("d", _params(MODEL_DIRS))
def test_missing_model_file_is_refused(d: Path, tmp_path: Path) -> None:
    copy = tmp_path / d.name
    shutil.copytree(d, copy)
    load_card(copy).path.unlink()
    with pytest.raises(ModelError, match="missing"):
        load_card(copy)


def test_normalisation_fast_path_gives_the_same_bits_as_broadcasting() -> None:
    model = load_model(FP32_REFERENCE, validate=False)
    mean, std = model.norm_stats
    rng = np.random.default_rng(3)
    for shape in ((1024, 4), (7, 4), (16, 64, 4), (1, 64, 4)):
        raw = rng.normal(2.0, 3.0, shape).astype(np.float32)
        want = np.subtract(raw, mean, dtype=np.float32) * (1.0 / std).astype(np.float32)
        got = model.normalize(raw)
        assert got.shape == raw.shape
        assert got.dtype == np.float32
        assert np.array_equal(got, want)
        assert np.array_equal(model.normalize(raw), want)  # from the cached tiles too
    strided = rng.normal(size=(64, 8)).astype(np.float32)[:, ::2]  # not contiguous
    want = np.subtract(strided, mean, dtype=np.float32) * (1.0 / std).astype(np.float32)
    assert np.array_equal(model.normalize(strided), want)
