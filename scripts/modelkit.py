"""Pieces every model build script shares (build environment only)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

OPSET, IR_VERSION = 17, 10  # onnx 1.23 writes IR 14 by default, which onnxruntime refuses


def save_onnx(graph: Any, path: Path, producer: str) -> None:
    """Wrap a hand-built graph in a model onnxruntime accepts, check it, write it."""
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def new_variant_dir(out: Path, name: str, backend: str, blob: bytes) -> tuple[Path, str]:
    """A fresh `out/name/` holding the model file; returns the directory and file name."""
    d = out / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    fname = "model.onnx" if backend == "onnx" else "model.tflite"
    (d / fname).write_bytes(blob)
    return d, fname
