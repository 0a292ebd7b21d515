"""ONNX Runtime backend. Providers come from the device profile in order; an
accelerator provider that fails to load falls back to CPU, logged and reported."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import BackendUnavailableError
from edge_agent.runtime.backend import Backend, Quant, model_threads

__all__ = ["OnnxBackend"]

log = logging.getLogger(__name__)
CPU = "CPUExecutionProvider"


class OnnxBackend(Backend):
    key = "onnx"

    def _load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError(f"onnxruntime is not installed: {e}") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = model_threads(self.profile.threads, self.card.path)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = set(ort.get_available_providers())
        wanted = list(self.profile.onnx_providers) or [CPU]
        usable = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available]
        if CPU not in usable:
            usable.append(CPU)
        if missing:
            self.fallback = f"not available in this onnxruntime build: {', '.join(missing)}"
            log.warning("%s: %s; using %s", self.card.name, self.fallback, ", ".join(usable))
        path = str(self.card.path)
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=usable)
        except Exception as e:
            if usable == [CPU]:
                raise
            # An accelerator that cannot initialise (driver, TensorRT engine) must not
            # become a crash loop: run on CPU and say so in status.
            self.fallback = f"{', '.join(p for p in usable if p != CPU)} failed: {e}"[:300]
            log.warning("%s: %s; falling back to CPU", self.card.name, self.fallback)
            self.session = ort.InferenceSession(path, sess_options=opts, providers=[CPU])
        self.providers = list(self.session.get_providers())
        inp = self.session.get_inputs()[0]
        self.input_name: str = inp.name
        self.input_quant = _quant_from_card(self.card.input, inp.type)
        out = self.session.get_outputs()[0]
        self.output_name: str = out.name
        self.output_quant = _quant_from_card(self.card.output, out.type)

    def _run(self, x: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        res: list[Any] = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(res[0])


def _quant_from_card(spec: Any, ort_type: str) -> Quant | None:
    """Integer I/O in an ONNX graph carries no scale, so it must come from the card."""
    if "int8" not in ort_type:
        return None
    if spec.scale is None or spec.zero_point is None:
        raise BackendUnavailableError(
            f"tensor {spec.name} is {ort_type} but the card gives no scale/zero_point"
        )
    return Quant(spec.scale, spec.zero_point, "uint8" if "uint8" in ort_type else "int8")
