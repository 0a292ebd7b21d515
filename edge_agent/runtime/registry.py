"""Backends by key. Runtimes import lazily inside each backend's `_load`, so a device
without LiteRT still runs ONNX models, and vice versa."""

from __future__ import annotations

import importlib
import importlib.util

from edge_agent.errors import BackendUnavailableError
from edge_agent.runtime.backend import Backend

__all__ = ["backend_class", "backend_keys", "runtime_available"]

_BACKENDS: dict[str, tuple[str, str]] = {
    "onnx": ("edge_agent.runtime.onnx_backend", "OnnxBackend"),
    "tflite": ("edge_agent.runtime.tflite_backend", "TfliteBackend"),
}
_RUNTIME_MODULES = {"onnx": ("onnxruntime",), "tflite": ("ai_edge_litert", "tflite_runtime")}


def backend_keys() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(key: str) -> type[Backend]:
    try:
        mod, name = _BACKENDS[key]
    except KeyError:
        raise BackendUnavailableError(
            f"unknown backend {key!r} (known: {', '.join(backend_keys())})"
        ) from None
    cls: type[Backend] = getattr(importlib.import_module(mod), name)
    return cls


def runtime_available(key: str) -> bool:
    """Whether a runtime for `key` is installed, without importing it."""
    return any(importlib.util.find_spec(m) is not None for m in _RUNTIME_MODULES.get(key, ()))
