"""Candidate models for updater tests, made from the real demo model: a plain copy with a
new version, one with a tiny threshold (alarms on everything), and ONNX graphs extended
with the onnx helper API that output NaN (always, or only on large inputs)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parent.parent.parent
FP32 = REPO / "models" / "vibration-ae-fp32-onnx"


def _rewrite_card(d: Path, **changes: Any) -> Path:
    card = json.loads((d / "model.json").read_text())
    model_file = d / card["file"]
    card["sha256"] = hashlib.sha256(model_file.read_bytes()).hexdigest()
    card["size_bytes"] = model_file.stat().st_size
    for k, v in changes.items():
        if k == "threshold":
            card["threshold"]["value"] = v
        else:
            card[k] = v
    (d / "model.json").write_text(json.dumps(card, indent=1))
    return d


def copy_model(
    dst: Path, version: int, *, threshold: float | None = None, name: str | None = None
) -> Path:
    shutil.copytree(FP32, dst)
    changes: dict[str, Any] = {"version": version}
    if threshold is not None:
        changes["threshold"] = threshold
    if name is not None:
        changes["name"] = name
    return _rewrite_card(dst, **changes)


def nan_model(dst: Path, version: int, *, above: float | None = None) -> Path:
    """The real model, with `y + 0 * sqrt(above - max|x|)` as output: NaN when any
    normalised input exceeds `above` (or always, with `above=None`)."""
    shutil.copytree(FP32, dst)
    m = onnx.load(str(dst / "model.onnx"))
    g = m.graph
    out = g.output[0]
    y = out.name
    g.output.remove(out)
    x = g.input[0].name
    c = float("nan") if above is None else above
    g.initializer.extend(
        [
            helper.make_tensor("nan_c", TensorProto.FLOAT, [], [c]),
            helper.make_tensor("nan_zero", TensorProto.FLOAT, [], [0.0]),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Abs", [x], ["nan_abs"]),
            helper.make_node("ReduceMax", ["nan_abs"], ["nan_max"], keepdims=0),
            helper.make_node("Sub", ["nan_c", "nan_max"], ["nan_d"]),
            helper.make_node("Sqrt", ["nan_d"], ["nan_s"]),
            helper.make_node("Mul", ["nan_s", "nan_zero"], ["nan_z"]),
            helper.make_node("Add", [y, "nan_z"], ["reconstruction_out"]),
        ]
    )
    new_out = helper.make_tensor_value_info("reconstruction_out", TensorProto.FLOAT, None)
    g.output.append(new_out)
    m.ir_version = 10
    onnx.save(m, str(dst / "model.onnx"))
    card = json.loads((dst / "model.json").read_text())
    card["output"]["name"] = "reconstruction_out"
    (dst / "model.json").write_text(json.dumps(card))
    return _rewrite_card(dst, version=version)


def golden_max_abs_normalised() -> float:
    card = json.loads((FP32 / "model.json").read_text())
    g = np.asarray(card["golden"]["inputs"], dtype=np.float64)
    pre = card["preprocessing"]
    x = (g - np.asarray(pre["mean"])) / np.asarray(pre["std"])
    return float(np.abs(x).max())
