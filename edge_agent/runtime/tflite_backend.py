"""LiteRT (TFLite) backend: ai-edge-litert, falling back to tflite_runtime where it
imports and works (it is NumPy-1-only). Integer I/O is (de)quantised from the tensor
details, which are authoritative over the card."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import BackendUnavailableError
from edge_agent.runtime.backend import Backend, Quant, model_threads

__all__ = ["TfliteBackend", "interpreter_class"]

log = logging.getLogger(__name__)


def interpreter_class() -> Any:
    errors = []
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError as e:
        errors.append(f"ai_edge_litert: {e}")
    try:
        from tflite_runtime.interpreter import Interpreter as TfrInterpreter

        return TfrInterpreter
    except (ImportError, AttributeError) as e:  # NumPy-2 ABI errors surface oddly
        errors.append(f"tflite_runtime: {e}")
    raise BackendUnavailableError(
        "no TFLite runtime: install the `tflite` extra (ai-edge-litert); " + "; ".join(errors)
    )


def _quant(detail: dict[str, Any]) -> Quant | None:
    dt = np.dtype(detail["dtype"]).name
    if dt not in ("int8", "uint8"):
        return None
    scale, zp = detail["quantization"]
    if not scale:
        raise BackendUnavailableError(f"tensor {detail['name']} is {dt} without quantisation")
    return Quant(float(scale), int(zp), dt)


class TfliteBackend(Backend):
    key = "tflite"

    @classmethod
    def load_runtime(cls) -> None:
        interpreter_class()

    def _load(self) -> None:
        cls = interpreter_class()
        self.interp = cls(
            model_path=str(self.card.path),
            num_threads=model_threads(self.profile.threads, self.card.path),
        )
        self.interp.allocate_tensors()
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        self.input_quant = _quant(self._in)
        self.output_quant = _quant(self._out)
        self._batch = int(self._in["shape"][0])
        self.providers = ["xnnpack" if "xnnpack" in self.profile.tflite_delegates else "cpu"]

    def _resize(self, batch: int) -> None:
        self.interp.resize_tensor_input(self._in["index"], [batch, *self._in["shape"][1:]])
        self.interp.allocate_tensors()
        self._batch = batch

    def _run(self, x: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        # Re-allocating tensors costs more than a tiny model's inference, so the batch
        # size only changes when the pipeline's batch size does (rarely, in steady state).
        if x.shape[0] != self._batch:
            self._resize(x.shape[0])
        self.interp.set_tensor(self._in["index"], np.ascontiguousarray(x))
        self.interp.invoke()
        return np.array(self.interp.get_tensor(self._out["index"]))
