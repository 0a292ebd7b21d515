"""Dense window models as ONNX graphs, their int8 QDQ variant, and (where TensorFlow's
converter is installed) an int8 TFLite variant. Shared by `edge-agent model new` and the
bundled models' build scripts.

A model here is a stack of dense layers over a window (n, W, C): first either the window
mean over W (n, C) or the flattened window (n, W*C), then (W_i, b_i, activation) layers,
then optionally a float "sum of squares" head giving the score itself, shape (n, 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ModelError

__all__ = [
    "IN_NAME",
    "IR_VERSION",
    "OPSET",
    "OUT_NAME",
    "SQUARE_NODE",
    "SUM_NODE",
    "DenseStack",
    "Layer",
    "dense_graph",
    "quantize_int8",
    "require_onnx",
    "save_onnx",
    "tflite_available",
    "tflite_int8",
]

OPSET, IR_VERSION = 17, 10  # onnx >= 1.23 writes IR 14 by default, which onnxruntime refuses
IN_NAME, OUT_NAME = "window", "out"
SQUARE_NODE, SUM_NODE = "score_square", "score_sum"  # kept float in int8 variants
QUANT_BATCH = 64

F32 = npt.NDArray[np.float32]
Layer = tuple[F32, F32, str]  # (weights (in, out), bias (out,), "relu" | "tanh" | "linear")


@dataclass(frozen=True)
class DenseStack:
    """What a graph computes; `pool`: window mean first (else flatten);
    `sum_squares_head`: output = sum of squared last activations, shape (n, 1)."""

    window: int
    channels: int
    layers: tuple[Layer, ...]
    pool: bool
    out_shape: tuple[int | None, ...]
    sum_squares_head: bool = False


def require_onnx() -> Any:
    """The `onnx` module, or a ModelError saying how to install it."""
    try:
        import onnx
    except ImportError as e:
        raise ModelError(
            "building a model needs the 'onnx' package: pip install onnx (the model extra)"
        ) from e
    return onnx


def dense_graph(spec: DenseStack, *, name: str = "edge-agent", ir_version: int = IR_VERSION) -> Any:
    """The checked ONNX ModelProto for `spec`, input `window` (n, W, C), output `out`;
    `name` names the graph (the producer is always edge-agent)."""
    onnx = require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    if spec.pool:
        nodes.append(helper.make_node("ReduceMean", [IN_NAME], ["h0"], axes=[1], keepdims=0))
    else:
        flat = np.array([-1, spec.window * spec.channels], np.int64)
        inits.append(numpy_helper.from_array(flat, "flat"))
        nodes.append(helper.make_node("Reshape", [IN_NAME, "flat"], ["h0"]))
    cur = "h0"
    for i, (w, b, act) in enumerate(spec.layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]))
        cur = f"a{i}"
        if act in ("relu", "tanh"):
            op = "Relu" if act == "relu" else "Tanh"
            nodes.append(helper.make_node(op, [cur], [f"r{i}"]))
            cur = f"r{i}"
    if spec.sum_squares_head:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "sum_axes"))
        nodes.append(helper.make_node("Mul", [cur, cur], ["sq"], name=SQUARE_NODE))
        nodes.append(
            helper.make_node("ReduceSum", ["sq", "sum_axes"], [OUT_NAME], keepdims=1, name=SUM_NODE)
        )
    elif len(spec.out_shape) > 2:
        shape = np.array([-1, *spec.out_shape[1:]], np.int64)
        inits.append(numpy_helper.from_array(shape, "oshape"))
        nodes.append(helper.make_node("Reshape", [cur, "oshape"], [OUT_NAME]))
    else:
        nodes.append(helper.make_node("Identity", [cur], [OUT_NAME]))
    g = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info(
                IN_NAME, TensorProto.FLOAT, ["n", spec.window, spec.channels]
            )
        ],
        [helper.make_tensor_value_info(OUT_NAME, TensorProto.FLOAT, ["n", *spec.out_shape[1:]])],
        inits,
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge-agent"
    )
    m.ir_version = ir_version
    onnx.checker.check_model(m)
    return m


def save_onnx(graph: Any, path: Path, producer: str) -> None:
    """Wrap a hand-built GraphProto in a model onnxruntime accepts, check it, write it."""
    onnx = require_onnx()
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def quantize_int8(src: Path, dst: Path, rep: F32, *, exclude: tuple[str, ...] = ()) -> None:
    """Static QDQ int8 (float I/O) with onnxruntime's own tools, ranges from `rep`
    (n, W, C) normalised windows; the nodes named in `exclude` stay float."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(
                [{IN_NAME: rep[i : i + QUANT_BATCH]} for i in range(0, len(rep), QUANT_BATCH)]
            )

        def get_next(self) -> dict[str, F32] | None:
            return next(self.it, None)

    # onnxruntime's quantiser warns on the root logger about pre-processing that does not
    # apply to these small graphs; keep that out of the user's output
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        _quantize(src, dst, Reader(), exclude)
    finally:
        root.setLevel(level)


def _quantize(src: Path, dst: Path, reader: Any, exclude: tuple[str, ...]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=False,
        nodes_to_exclude=list(exclude),
    )


def tflite_available() -> bool:
    """True when TensorFlow's TFLite converter can be imported (never on a device)."""
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def tflite_int8(spec: DenseStack, rep: F32) -> bytes:
    """Full-integer TFLite (int8 input). Output int8, except with a sum-of-squares head:
    its MUL and SUM stay float32 (denylisted in the converter's quantisation debugger)
    and the output is float32, so the score keeps its resolution."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    with warnings.catch_warnings(), _stdout_to_stderr():
        # the converter's own debugger still uses TF's deprecated interpreter
        warnings.simplefilter("ignore")
        return _tflite_int8(spec, rep)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The converter prints from C++ straight to file descriptor 1; `--json` output
    must stay clean, so fd 1 points at stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _tflite_int8(spec: DenseStack, rep: F32) -> bytes:
    import tensorflow as tf

    inp = tf.keras.Input((spec.window, spec.channels))
    h = (
        tf.keras.layers.GlobalAveragePooling1D()(inp)
        if spec.pool
        else tf.keras.layers.Flatten()(inp)
    )
    dense = []
    for w, b, act in spec.layers:
        lay = tf.keras.layers.Dense(w.shape[1], activation=None if act == "linear" else act)
        h = lay(h)
        dense.append((lay, w, b))
    if spec.sum_squares_head:
        h = tf.keras.layers.Multiply()([h, h])
        h = tf.keras.layers.Lambda(lambda t: tf.reduce_sum(t, axis=-1, keepdims=True))(h)
    elif len(spec.out_shape) > 2:
        h = tf.keras.layers.Reshape(spec.out_shape[1:])(h)
    m = tf.keras.Model(inp, h)
    for lay, w, b in dense:
        lay.set_weights([w, b])
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def gen() -> Any:
        for i in range(0, len(rep), max(1, len(rep) // 500)):
            yield [rep[i : i + 1]]

    conv.representative_dataset = gen
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    if spec.sum_squares_head:
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        conv.inference_output_type = tf.float32
        dbg = tf.lite.experimental.QuantizationDebugger(
            converter=conv,
            debug_dataset=gen,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=["MUL", "SUM"]
            ),
        )
        selective: bytes = dbg.get_nondebug_quantized_model()
        return selective
    conv.inference_output_type = tf.int8
    out: bytes = conv.convert()
    return out
