"""The one narrow interface every inference backend implements.

The base class owns the invariants: (de)quantisation of int8 tensors, the warm-up
inference at load (so a slow first call never trips the watchdog), input shape
checks, latency measurement, error translation, and one lock per instance: a model
instance runs one call at a time. A backend supplies two hooks: `_load()` and `_run(x)`.

Why the lock: one loaded model is shared by every stream of its family after an OTA
promotion, by the shadow runner and by the stream it serves. The LiteRT interpreter's
resize/set_tensor/invoke/get_tensor sequence is one piece of state per interpreter (a
second thread in the middle gives "at least 1 reference to internal data" or the other
thread's output), and a runtime's preallocated buffers or I/O bindings are the same
kind of state. ONNX Runtime's `run` is thread-safe, but the lock costs ~0.1 us
uncontended and keeps the invariant one rule for every backend.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from edge_agent.errors import BackendUnavailableError, ModelError
from edge_agent.profiles import Profile
from edge_agent.runtime.card import ModelCard
from edge_agent.runtime.latency import LatencyHistogram

__all__ = ["SMALL_MODEL_BYTES", "Backend", "Quant", "dequantize", "model_threads", "quantize"]

log = logging.getLogger(__name__)

_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_clock = time.perf_counter  # a module global: one look-up a call, not two


# Below this size a model's inference takes microseconds, and waking a second intra-op
# thread costs more than it saves (measured: 47 vs 58 us per batch of 16, docs/benchmarks.md).
SMALL_MODEL_BYTES = 1 << 20


def model_threads(profile_threads: int, model_path: Path) -> int:
    try:
        small = model_path.stat().st_size < SMALL_MODEL_BYTES
    except OSError:
        small = False
    return 1 if small else profile_threads


@dataclass(frozen=True)
class Quant:
    scale: float
    zero_point: int
    dtype: str  # "int8" | "uint8"


def quantize(x: npt.NDArray[np.float32], q: Quant) -> npt.NDArray[np.generic]:
    """Round half to even, then clip to the integer range, as TFLite does."""
    lo, hi = _INT_RANGE[q.dtype]
    r = np.rint(x / np.float32(q.scale)) + q.zero_point
    out: npt.NDArray[np.generic] = np.clip(r, lo, hi).astype(q.dtype)
    return out


def dequantize(y: npt.NDArray[np.generic], q: Quant) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (y.astype(np.float32) - np.float32(q.zero_point)) * np.float32(
        q.scale
    )
    return out


class Backend(ABC):
    key: ClassVar[str]
    # Can move between execution providers after load (bind/unbind), keeping the model's
    # bytes in host memory: what the pool's accelerator budget needs (runtime/binding.py).
    bindable: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def load_runtime(cls) -> None:
        """Import this backend's runtime library, once per process (BackendUnavailableError
        when it is not installed). The model pool does so before it measures a model's
        load: the library (onnxruntime: ~30 MB resident on x86) is the process's for good,
        not any one model's."""

    def __init__(self, card: ModelCard, profile: Profile) -> None:
        self.card = card
        self.profile = profile
        self.input_quant: Quant | None = None
        self.output_quant: Quant | None = None
        self.providers: list[str] = []
        self.fallback: str = ""  # why an accelerator was not used, if one was wanted
        self.model_bytes = b""  # the model file as loaded (bindable backends keep it)
        self.calls = 0
        self.total_s = 0.0
        self.latency = LatencyHistogram()  # per call, for the metrics endpoint
        self._shape: tuple[int, ...] = ()  # per-sample input shape, fixed at load
        # Held from feeding the input to copying the output out (see the module docstring).
        self._lock = threading.Lock()

    # -- hooks -----------------------------------------------------------------
    @abstractmethod
    def _load(self) -> None:
        """Open the model; set input_quant/output_quant from tensor details if integer I/O."""

    @abstractmethod
    def _run(self, x: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """Run a batch already in the model's input dtype; return the raw output as an
        array the runtime will not reuse (a copy, not a view on its buffers). Called
        with the instance's lock held: one call at a time."""

    # -- binding (bindable backends) ----------------------------------------------
    def bind(self, providers: Sequence[str]) -> None:
        """Serve from a new session on `providers` (falling back to CPU, with the reason in
        `fallback`), built from the bytes held since load and warmed up before it serves."""
        raise BackendUnavailableError(f"{self.key} models cannot be bound to other providers")

    def unbind(self) -> None:
        """Drop the session (and the accelerator memory it holds); the bytes stay."""
        raise BackendUnavailableError(f"{self.key} models cannot be unbound")

    # -- public ------------------------------------------------------------------
    def load(self) -> None:
        try:
            self._load()
        except ModelError:
            raise
        except Exception as e:  # runtimes raise their own types: translate at the edge
            raise ModelError(f"{self.card.path}: {self.key} could not load the model: {e}") from e
        self._shape = self._sample_shape()
        self.infer(np.zeros((1, *self._shape), dtype=np.float32))  # warm-up
        self.calls, self.total_s = 0, 0.0
        self.latency.reset()  # the warm-up is not a served call
        log.info(
            "loaded %s v%d on %s (%s)",
            self.card.name,
            self.card.version,
            self.key,
            ", ".join(self.providers) or "default",
        )

    def _sample_shape(self) -> tuple[int, ...]:
        shape = self.card.input.shape[1:]
        if any(s is None for s in shape):
            raise ModelError(f"{self.card.name}: only the batch dimension may be dynamic")
        return tuple(int(s) for s in shape if s is not None)

    def infer(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Float batch (n, *input shape) in, float batch out, whatever the model's tensor
        types. Safe to call from several threads: calls on one instance run one at a time.
        Raises ModelError on a wrong shape or a runtime failure."""
        if x.shape[1:] != self._shape:
            raise ModelError(f"{self.card.name}: input shape {x.shape[1:]} != {self._shape}")
        q = self.input_quant
        xin: npt.NDArray[np.generic] = x if q is None else quantize(x, q)
        with self._lock:
            t0 = _clock()
            try:
                y = self._run(xin)
            except ModelError:
                raise
            except Exception as e:
                raise ModelError(f"{self.card.name}: inference failed on {self.key}: {e}") from e
            dt = _clock() - t0
            self.total_s += dt
            self.calls += 1
            self.latency.observe(dt)
        q = self.output_quant
        return y if q is None else dequantize(y, q)  # type: ignore[return-value]  # float models: float32
