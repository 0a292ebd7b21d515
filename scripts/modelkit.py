"""Pieces every model build script shares (build environment only)."""

from __future__ import annotations

import shutil
from pathlib import Path

# Shared with `edge-agent model new`: one copy, in the package.
from edge_agent.modelbuild.onnxgraph import IR_VERSION, OPSET, save_onnx

__all__ = ["IR_VERSION", "OPSET", "new_variant_dir", "save_onnx"]


def new_variant_dir(out: Path, name: str, backend: str, blob: bytes) -> tuple[Path, str]:
    """A fresh `out/name/` holding the model file; returns the directory and file name."""
    d = out / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    fname = "model.onnx" if backend == "onnx" else "model.tflite"
    (d / fname).write_bytes(blob)
    return d, fname
