#!/usr/bin/env python3
"""Build the `inspection-ae` image model family: train, export, quantise, write cards.

Run with the build environment (tensorflow-cpu, onnx, opencv); the agent never imports it:

    /work/main/.venv-build/bin/python scripts/build_image_models.py --out models

A small convolutional autoencoder learns good parts in a fixed inspection view
(`edge_agent.sources.synth_scene`: a plate with two holes and a notch on a conveyor,
position jitter, lighting drift, belt texture, sensor noise). The camera source turns
each frame into 32x32 grayscale in [0, 1] (`camera.prepare_frame`); the model
reconstructs it, and the score is the reconstruction's mean squared error, which is
high where the frame holds something a good part does not (a missing hole, a scratch,
a foreign object, a misplaced or missing part).

Half of the training frames go through a JPEG round trip (quality 70-95), as from an
MJPEG camera or a video file. Variants: fp32 ONNX (graph built by hand from the Keras
weights), int8 ONNX (static QDQ) and int8 TFLite (full integer, int8 I/O). Thresholds,
golden scores and agreement come from each variant's own runtime through the agent's
own model code (edge_agent.runtime).

Seeds: 1 training, 2 validation (threshold), 3 evaluation (with defects), 4 golden
frames, 9 the agreement set that `edge-agent bench --select` re-measures on a device.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN reorders float sums

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from build_models import IN_NAME, OUT_NAME, export_onnx_int8, export_tflite_int8  # noqa: E402
from modelkit import new_variant_dir, save_onnx  # noqa: E402

from edge_agent.measure.bench import AGREEMENT_FRAMES, AGREEMENT_SEED  # noqa: E402
from edge_agent.measure.benchdata import FRAME_DEFECT_RATE  # noqa: E402
from edge_agent.sources.synth_scene import (  # noqa: E402
    DEFECTS,
    SCALE_X,
    SCALE_Y,
    SceneSpec,
    frames,
    model_samples,
    to_bgr,
)

F32 = npt.NDArray[np.float32]

FAMILY = "inspection-ae"
VERSION = 1
H = W = 32
CHANNEL = f"pixels_{H}x{W}"
FPS = 5.0  # the camera source's default fps_cap
CONV = ((8, 3, 2), (16, 3, 2))  # filters, kernel, stride: 32x32 -> 16x16x8 -> 8x8x16
CODE = 32
EPOCHS, BATCH, LR = 30, 128, 1e-2  # 2e-3 stalls at loss 0.1 (tanh code saturates early)
TRAIN_SEED, VAL_SEED, EVAL_SEED, GOLDEN_SEED = 1, 2, 3, 4
N_TRAIN, N_VAL, N_EVAL = 8000, 2000, 3000
EVAL_DEFECT_RATE = 0.4
JPEG_QUALITY = (70, 95)
THRESHOLD_Q, THRESHOLD_MARGIN = 0.999, 1.25
AGREEMENT_SLACK = 1.25  # stated bound = observed worst gap x this
ALARM = {"min_on": 2, "min_off": 2, "hysteresis": 0.8}


# ---------------------------------------------------------------------------
# Data: the synthetic view, as the camera source delivers it
# ---------------------------------------------------------------------------
def camera_samples(
    seed: int, n: int, *, defect_rate: float = 0.0, jpeg_share: float = 0.5
) -> tuple[F32, list[str | None], npt.NDArray[np.bool_]]:
    """Frames through OpenCV exactly as CameraSource prepares them; a share of them
    JPEG-compressed first. Returns samples (n, H*W), labels, and which were JPEG."""
    import cv2

    from edge_agent.sources.camera import prepare_frame

    rng = np.random.default_rng(seed + 1000)
    out = np.empty((n, H * W), np.float32)
    labels: list[str | None] = []
    jpeg = rng.random(n) < jpeg_share
    spec = SceneSpec(height=H * SCALE_Y, width=W * SCALE_X)
    for i, (img, kind) in enumerate(frames(seed, n, spec, defect_rate=defect_rate)):
        bgr = to_bgr(img)
        if jpeg[i]:
            q = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
            assert ok
            bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        out[i] = prepare_frame(bgr, W, H)[0]
        labels.append(kind)
    return out, labels, jpeg


# ---------------------------------------------------------------------------
# Training (Keras) and export
# ---------------------------------------------------------------------------
def train(xn: F32, xn_val: F32) -> tuple[Any, dict[str, Any]]:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1234)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    k = tf.keras
    layers: list[Any] = [k.Input((1, H * W), name=IN_NAME), k.layers.Reshape((H, W, 1))]
    for f, ks, st in CONV:
        layers.append(k.layers.Conv2D(f, ks, strides=st, padding="same", activation="relu"))
    layers += [
        k.layers.Flatten(),
        k.layers.Dense(CODE, activation="tanh"),  # bounded code: a defect cannot be copied
        k.layers.Dense(H * W),
        k.layers.Reshape((1, H * W)),
    ]
    model = k.Sequential(layers)
    sched = k.optimizers.schedules.CosineDecay(LR, EPOCHS * (len(xn) // BATCH + 1))
    model.compile(optimizer=k.optimizers.Adam(sched), loss="mse")
    hist = model.fit(
        xn, xn, epochs=EPOCHS, batch_size=BATCH, shuffle=True,
        validation_data=(xn_val, xn_val), verbose=0,
    )  # fmt: skip
    h = hist.history
    print(f"trained {EPOCHS} epochs: loss {h['loss'][-1]:.5f} val_loss {h['val_loss'][-1]:.5f}")
    return model, h


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding: the odd pixel goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def export_onnx_fp32(model: Any, path: Path) -> None:
    import tensorflow as tf
    from onnx import TensorProto, helper, numpy_helper

    convs = [ly for ly in model.layers if isinstance(ly, tf.keras.layers.Conv2D)]
    dense = [ly for ly in model.layers if isinstance(ly, tf.keras.layers.Dense)]

    def arr(name: str, a: Any) -> Any:
        return numpy_helper.from_array(np.asarray(a), name)

    inits = [
        arr("image_shape", np.array([-1, 1, H, W], np.int64)),
        arr("flat_shape", np.array([-1, 0], np.int64)),
        arr("frame_shape", np.array([-1, 1, H * W], np.int64)),
    ]
    nodes = [helper.make_node("Reshape", [IN_NAME, "image_shape"], ["c_in"], name="to_image")]
    h, size = "c_in", H
    for i, ly in enumerate(convs):
        kern = np.asarray(ly.kernel, np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        ks, st = int(kern.shape[2]), int(ly.strides[0])
        lo, hi = _same_pads(size, ks, st)
        inits += [arr(f"K{i}", kern), arr(f"kb{i}", np.asarray(ly.bias, np.float32))]
        nodes += [
            helper.make_node(
                "Conv", [h, f"K{i}", f"kb{i}"], [f"conv{i}"], name=f"conv{i}",
                kernel_shape=[ks, ks], strides=[st, st], pads=[lo, lo, hi, hi],
            ),
            helper.make_node("Relu", [f"conv{i}"], [f"crelu{i}"], name=f"conv{i}_relu"),
        ]  # fmt: skip
        h, size = f"crelu{i}", -(-size // st)
    # Keras flattens channels-last: NCHW -> NHWC before the dense layers
    nodes += [
        helper.make_node(
            "Transpose",
            [
                h,
            ],
            ["nhwc"],
            name="to_nhwc",
            perm=[0, 2, 3, 1],
        ),
        helper.make_node("Reshape", ["nhwc", "flat_shape"], ["d_in"], name="flatten"),
    ]
    inits[1] = arr("flat_shape", np.array([-1, size * size * CONV[-1][0]], np.int64))
    h = "d_in"
    for i, ly in enumerate(dense):
        inits += [
            arr(f"W{i}", np.asarray(ly.kernel, np.float32)),
            arr(f"b{i}", np.asarray(ly.bias, np.float32)),
        ]
        nodes += [
            helper.make_node("MatMul", [h, f"W{i}"], [f"mm{i}"], name=f"dense{i}_matmul"),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"], name=f"dense{i}_bias"),
        ]
        h = f"z{i}"
        if i == 0:
            nodes.append(helper.make_node("Tanh", [h], ["code"], name="dense0_tanh"))
            h = "code"
    nodes.append(helper.make_node("Reshape", [h, "frame_shape"], [OUT_NAME], name="to_frame"))
    graph = helper.make_graph(
        nodes,
        "inspection_ae",
        [helper.make_tensor_value_info(IN_NAME, TensorProto.FLOAT, ["batch", 1, H * W])],
        [helper.make_tensor_value_info(OUT_NAME, TensorProto.FLOAT, ["batch", 1, H * W])],
        inits,
    )
    save_onnx(graph, path, "edge-agent build_image_models.py")


# ---------------------------------------------------------------------------
# Cards: every figure from the agent's own runtime path
# ---------------------------------------------------------------------------
def _scores(model: Any, raw: F32) -> npt.NDArray[np.float64]:
    x = raw[:, None, :]  # one frame = one window
    return np.concatenate([model.scores(x[i : i + 256]) for i in range(0, len(x), 256)])


def evaluate(
    scores: npt.NDArray[np.float64], labels: list[str | None], thr: float
) -> dict[str, Any]:
    lab = np.array([k or "" for k in labels])
    normal = lab == ""
    by_kind = {k: float(np.mean(scores[lab == k] > thr)) for k in DEFECTS if np.any(lab == k)}
    return {
        "frames_good": int(normal.sum()),
        "frames_defective": int((~normal).sum()),
        "defective_above_threshold": float(np.mean(scores[~normal] > thr)),
        "defective_above_threshold_by_kind": by_kind,
        "false_positive_rate": float(np.mean(scores[normal] > thr)),
        "good_score_p50": float(np.median(scores[normal])),
        "good_score_max": float(scores[normal].max()),
        "defective_score_min_by_kind": {
            k: float(scores[lab == k].min()) for k in DEFECTS if np.any(lab == k)
        },
    }


def write_card(path: Path, card: dict[str, Any]) -> None:
    """model.json, indented, except the golden frames: one line each, float32 values in
    their shortest exact form (7,168 numbers would otherwise take 185 kB per card)."""
    body = json.loads(json.dumps({k: v for k, v in card.items() if not k.startswith("_")}))
    frames_ = body.get("golden", {}).get("inputs")
    if frames_ is not None:
        body["golden"]["inputs"] = "@GOLDEN@"
    text = json.dumps(body, indent=1) + "\n"
    if frames_ is not None:
        rows = np.asarray(frames_, np.float32).reshape(len(frames_), -1)
        lines = ",\n".join("   [[" + ",".join(str(v) for v in row) + "]]" for row in rows)
        text = text.replace('"@GOLDEN@"', "[\n" + lines + "\n  ]")
    path.write_text(text)


def write_variant(  # noqa: PLR0917 - a build script's one call site
    out: Path, precision: str, backend: str, blob: bytes, base: dict[str, Any], data: dict[str, Any]
) -> dict[str, Any]:
    from edge_agent.runtime.card import card_from_dict, sha256_file
    from edge_agent.runtime.model import load_model

    name = f"{FAMILY}-{precision}-{backend}"
    d, fname = new_variant_dir(out, name, backend, blob)
    card = json.loads(json.dumps(base))
    card.update(
        name=name,
        label=f"Inspection-view autoencoder (32x32 grayscale), {precision}, {backend}",
        backend=backend,
        file=fname,
        sha256=sha256_file(d / fname),
        size_bytes=len(blob),
        precision=precision,
    )
    golden = data["golden"][:, None, :]
    card["golden"] = {"inputs": golden.tolist(), "scores": [0.0] * len(golden)}
    card["threshold"] = {"value": 1.0, "method": "placeholder"}
    model = load_model(d, card=card_from_dict(card, d), validate=False)
    for key, q in (("input", model.backend.input_quant), ("output", model.backend.output_quant)):
        if q is not None:
            card[key].update(dtype="int8", scale=q.scale, zero_point=q.zero_point)
    val = _scores(model, data["val"])
    thr = float(np.quantile(val, THRESHOLD_Q) * THRESHOLD_MARGIN)
    card["threshold"] = {
        "value": thr,
        "method": f"quantile {THRESHOLD_Q} x {THRESHOLD_MARGIN} of this variant's scores "
        f"(its own runtime) on {len(val)} good-part validation frames (seed {VAL_SEED}, "
        "half JPEG-compressed). A fallback: on a real line run `edge-agent calibrate`.",
    }
    int8 = precision == "int8"
    card["golden"] = {
        "inputs": golden.tolist(),
        "scores": [float(s) for s in model.scores(golden)],
        "atol": 1e-3 if int8 else 1e-5,
        "rtol": 1e-2 if int8 else 1e-4,
        "kinds": data["golden_kinds"],
        "source": f"synthetic inspection view seed {GOLDEN_SEED}: good parts and one frame "
        "per defect; scores from this variant on onnxruntime / LiteRT",
    }
    ev = _scores(model, data["eval"])
    metrics = evaluate(ev, data["eval_labels"], thr)
    jp = data["eval_jpeg"]
    metrics["false_positive_rate_jpeg_frames"] = evaluate(
        ev[jp], [k for k, j in zip(data["eval_labels"], jp, strict=True) if j], thr
    )["false_positive_rate"]
    metrics["evaluated_on"] = (
        f"{len(ev)} frames of seed {EVAL_SEED} (held out), {EVAL_DEFECT_RATE:.0%} defective, "
        "half JPEG-compressed"
    )
    card["metrics"] = metrics
    card["_agreement_scores"] = _scores(model, data["agreement"]).tolist()
    write_card(d / "model.json", card)
    load_model(d).check_golden()
    print(
        f"  {name}: {len(blob)} B  thr {thr:.4g}  defective>thr "
        f"{metrics['defective_above_threshold']:.3f} {metrics['defective_above_threshold_by_kind']}"
        f"  FPR {metrics['false_positive_rate']:.4f}"
    )
    return card


def add_agreement(out: Path, cards: dict[str, dict[str, Any]]) -> None:
    ref_name = f"{FAMILY}-fp32-onnx"
    ref = np.asarray(cards[ref_name]["_agreement_scores"])
    thr = cards[ref_name]["threshold"]["value"]
    for name, card in cards.items():
        if name == ref_name:
            continue
        got = np.asarray(card["_agreement_scores"])
        diff = np.abs(got - ref)
        normal = ref < thr
        atol = float(f"{AGREEMENT_SLACK * diff[normal].max():.2g}")
        rtol = float(f"{AGREEMENT_SLACK * np.max(np.maximum(diff - atol, 0) / ref):.2g}")
        agreement = {
            "windows": f"{len(ref)} frames of the synthetic inspection view, seed "
            f"{AGREEMENT_SEED}, {FRAME_DEFECT_RATE:.0%} defective (edge_agent.measure.benchdata)",
            "versus": f"{ref_name} on onnxruntime",
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(np.max(diff / ref)),
            "normal_windows_max_abs_diff": float(diff[normal].max()),
            "normal_windows_median_abs_diff": float(np.median(diff[normal])),
            "decisions_agree": float(np.mean((got > card["threshold"]["value"]) == (ref > thr))),
            "bound": {"atol": atol, "rtol": rtol},
            "bound_rule": "|score - fp32_score| <= atol + rtol * fp32_score",
        }
        card["agreement"] = agreement
        path = out / name / "model.json"
        saved = json.loads(path.read_text())
        saved["agreement"] = agreement
        write_card(path, saved)
        print(f"  {name} vs fp32: {agreement}")


def model_card_md(card: dict[str, Any]) -> str:
    m, t = card["metrics"], card["training"]
    kinds = ", ".join(f"{k} {v:.3f}" for k, v in m["defective_above_threshold_by_kind"].items())
    lines = [
        f"# {card['name']}: fixed inspection view autoencoder",
        "",
        "## What it is",
        "",
        f"One camera frame per window: grayscale, area-resized to {H}x{W}, scaled to [0, 1]",
        "by the camera source (`edge_agent.sources.camera.prepare_frame`), then normalised",
        f"with the card's mean/std (one pair for all pixels). Architecture: {t['architecture']}.",
        "Score: mean squared reconstruction error over the frame (`reconstruction_mse`).",
        "It learned good parts only; anything a good part does not show reconstructs badly.",
        "",
        f"Precision {card['precision']}, runtime {card['backend']}, {card['size_bytes']} bytes.",
        f"Threshold {card['threshold']['value']:.4g}: {card['threshold']['method']}",
        f"Alarm defaults: min_on {ALARM['min_on']} frames, min_off {ALARM['min_off']}, "
        f"hysteresis {ALARM['hysteresis']}.",
        "",
        "## Data",
        "",
        f"Training: {t['frames']} good-part frames of `edge_agent.sources.synth_scene` (seed",
        f"{TRAIN_SEED}), half JPEG-compressed at quality {JPEG_QUALITY[0]}-{JPEG_QUALITY[1]}; "
        f"validation {N_VAL} frames (seed {VAL_SEED}).",
        "Normal variation it accepts: position jitter within +-2 px of 128 (fixture",
        "tolerance), lighting gain 0.85-1.15 and offset +-8 grey levels, belt texture, noise.",
        "",
        f"## Quality ({m['evaluated_on']})",
        "",
        f"- defective frames above threshold: {m['defective_above_threshold']:.3f} ({kinds})",
        f"- good frames above threshold (false positives): {m['false_positive_rate']:.4f}",
        f"- good-frame score median {m['good_score_p50']:.3g}, max {m['good_score_max']:.3g}",
        "",
    ]
    if "agreement" in card:
        a = card["agreement"]
        lines += [
            "## Agreement with fp32",
            "",
            f"On {a['windows']}: max abs diff {a['max_abs_diff']:.3g}, good frames max/median",
            f"{a['normal_windows_max_abs_diff']:.3g}/{a['normal_windows_median_abs_diff']:.3g},"
            f" decisions agree {a['decisions_agree']:.4f}; stated bound atol",
            f"{a['bound']['atol']:g}, rtol {a['bound']['rtol']:g}.",
            "",
        ]
    lines += [
        "## Limits",
        "",
        "A synthetic view: it shows the pipeline and the int8 path end to end, not a",
        "validated inspection. A real line needs its own training frames (this script with",
        "real good-part images in place of `synth_scene`), a fixed camera and lighting, and",
        "`edge-agent calibrate` on site. Changes the training never saw (a new part colour,",
        "a moved camera) score as defects: retrain or recalibrate after such a change.",
        "",
        "Rebuild: `python scripts/build_image_models.py --out models` (build extra + camera).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "models")
    args = ap.parse_args(argv)
    out: Path = args.out

    print("rendering frames ...")
    train_x, _, _ = camera_samples(TRAIN_SEED, N_TRAIN)
    val_x, _, _ = camera_samples(VAL_SEED, N_VAL)
    ev_x, ev_lab, ev_jpeg = camera_samples(EVAL_SEED, N_EVAL, defect_rate=EVAL_DEFECT_RATE)
    g_good, _, _ = camera_samples(GOLDEN_SEED, 2, jpeg_share=0.0)
    g_def = [model_samples(GOLDEN_SEED, 1, H, W, defect_rate=1.0, defects=(k,))[0] for k in DEFECTS]
    agree_x, _ = model_samples(
        AGREEMENT_SEED, AGREEMENT_FRAMES, H, W, defect_rate=FRAME_DEFECT_RATE
    )
    mean, std = float(train_x.mean()), float(train_x.std())

    def norm(x: F32) -> F32:
        return ((x - np.float32(mean)) / np.float32(std))[:, None, :].astype(np.float32)

    model, hist = train(norm(train_x), norm(val_x))
    tmp = out / f".{FAMILY}-build"
    tmp.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path, tfl_path = tmp / "fp32.onnx", tmp / "int8.onnx", tmp / "int8.tflite"
    export_onnx_fp32(model, fp32_path)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    probe = norm(val_x[:64])
    gap = np.abs(sess.run(None, {IN_NAME: probe})[0] - model.predict(probe, verbose=0)).max()
    print(f"ONNX fp32 vs Keras: max abs diff {gap:.2e}")
    assert gap < 1e-4, "hand-built ONNX graph does not match Keras"
    calib = norm(train_x[:2048])
    export_onnx_int8(fp32_path, calib, int8_path)
    export_tflite_int8(model, calib, tfl_path)

    n_params = int(model.count_params())
    conv_desc = " -> ".join(f"conv{k}x{k}/{s} {f}" for f, k, s in CONV)
    base: dict[str, Any] = {
        "family": FAMILY,
        "version": VERSION,
        "input": {"name": IN_NAME, "shape": [None, 1, H * W], "dtype": "float32"},
        "output": {"name": OUT_NAME, "shape": [None, 1, H * W], "dtype": "float32"},
        "batch": "dynamic: any number of frames per run",
        "preprocessing": {
            "window": 1,
            "hop": 1,
            "channels": [CHANNEL],
            "frame": {"height": H, "width": W},
            "rate_hz": FPS,
            "mean": [mean],
            "std": [std],
            "normalisation": "camera source: gray, INTER_AREA resize, /255; then "
            "x_n = (x - mean) / std, one pair for every pixel, outside the model",
        },
        "score": {
            "kind": "reconstruction_mse",
            "formula": "mean over the frame's pixels of (x_n - reconstruction)^2, float64",
        },
        "alarm": ALARM,
        "training": {
            "data": "edge_agent.sources.synth_scene, good parts only, camera.prepare_frame",
            "frames": N_TRAIN,
            "seed": TRAIN_SEED,
            "validation_seed": VAL_SEED,
            "jpeg_share": 0.5,
            "architecture": f"{H}x{W}x1 -> {conv_desc} (ReLU, TF 'same' padding) -> "
            f"flatten -> dense {CODE} (tanh) -> dense {H * W} -> frame",
            "parameters": n_params,
            "epochs": EPOCHS,
            "batch": BATCH,
            "optimizer": f"Adam, cosine decay from {LR}",
            "loss": "mse",
            "final_loss": float(hist["loss"][-1]),
            "final_val_loss": float(hist["val_loss"][-1]),
            "calibration": "2048 normalised training frames (quantisation)",
            "build": "scripts/build_image_models.py --out models",
        },
    }
    data = {
        "val": val_x,
        "eval": ev_x,
        "eval_labels": ev_lab,
        "eval_jpeg": ev_jpeg,
        "golden": np.concatenate([g_good, *g_def]),
        "golden_kinds": ["good", "good", *DEFECTS],
        "agreement": agree_x,
    }
    cards = {}
    for precision, backend, p in (
        ("fp32", "onnx", fp32_path),
        ("int8", "onnx", int8_path),
        ("int8", "tflite", tfl_path),
    ):
        c = write_variant(out, precision, backend, p.read_bytes(), base, data)
        cards[c["name"]] = c
    add_agreement(out, cards)
    for name, c in cards.items():
        (out / name / "MODEL_CARD.md").write_text(model_card_md(c))
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
