"""ONNX Runtime backend. Providers come from the device profile in order; an
accelerator provider that fails to load falls back to CPU, logged and reported.

The model's bytes are read once at load and kept: the pool binds a model to the
accelerator and unbinds it again (runtime/binding.py), and a re-bind builds its session
from those bytes without touching the disk (nor re-checking the hash) again."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import BackendUnavailableError
from edge_agent.runtime.backend import Backend, Quant, model_threads, quantize
from edge_agent.runtime.binding import CPU

__all__ = ["OnnxBackend"]

log = logging.getLogger(__name__)

# Said in status while a model the pool unbound is used anyway (by a holder outside the
# pool): it runs on CPU from its host bytes until the pool binds it again.
UNBOUND = "unbound from the accelerator by the model pool; on CPU until bound again"


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailableError(f"onnxruntime is not installed: {e}") from e
    return ort


class OnnxBackend(Backend):
    key = "onnx"
    bindable = True

    @classmethod
    def load_runtime(cls) -> None:
        _ort()

    def _load(self) -> None:
        self.model_bytes = self.card.path.read_bytes()
        # Fixed at load: a re-bind must not look at the file (it may be gone or replaced).
        self._threads = model_threads(self.profile.threads, self.card.path)
        self.session, self.fallback = self._open(self.profile.onnx_providers)
        self.providers = list(self.session.get_providers())
        inp = self.session.get_inputs()[0]
        self.input_name: str = inp.name
        self.input_quant = _quant_from_card(self.card.input, inp.type)
        out = self.session.get_outputs()[0]
        self.output_name: str = out.name
        self.output_quant = _quant_from_card(self.card.output, out.type)
        self._output_names = [self.output_name]
        # One RunOptions for every call: without one, onnxruntime builds a default per run
        # (~0.7 us of a batch-1 run's ~7; calls on one instance are serialised by the lock).
        self._run_options = _ort().RunOptions()
        self._session_run = _session_run(self.session)
        self._one = _batch1(self.session, self._run_options)

    def _open(self, providers: Sequence[str]) -> tuple[Any, str]:
        """(a session on `providers` as far as they work, why not all of them or "")."""
        ort = _ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        available = set(ort.get_available_providers())
        wanted = list(providers) or [CPU]
        usable = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available]
        if CPU not in usable:
            usable.append(CPU)
        fallback = ""
        if missing:
            fallback = f"not available in this onnxruntime build: {', '.join(missing)}"
            log.warning("%s: %s; using %s", self.card.name, fallback, ", ".join(usable))
        try:
            session = ort.InferenceSession(self.model_bytes, sess_options=opts, providers=usable)
        except Exception as e:
            if usable == [CPU]:
                raise
            # An accelerator that cannot initialise (driver, TensorRT engine) must not
            # become a crash loop: run on CPU and say so in status.
            fallback = f"{', '.join(p for p in usable if p != CPU)} failed: {e}"[:300]
            log.warning("%s: %s; falling back to CPU", self.card.name, fallback)
            session = ort.InferenceSession(self.model_bytes, sess_options=opts, providers=[CPU])
        # onnxruntime may drop a provider whose libraries do not load (CUDA, cuDNN,
        # TensorRT) with a log line only, and run on the rest: say so.
        dropped = [p for p in usable if p not in session.get_providers()]
        if dropped and not fallback:
            fallback = (
                f"onnxruntime dropped {', '.join(dropped)} when opening the session "
                "(its libraries did not load: docs/install.md, checking the accelerator)"
            )
            log.warning("%s: %s", self.card.name, fallback)
        return session, fallback

    def bind(self, providers: Sequence[str]) -> None:
        try:
            session, fallback = self._open(providers)
            # Warmed up before it serves: a TensorRT engine builds on its first run.
            x = np.zeros((1, *self._shape), dtype=np.float32)
            xin = quantize(x, self.input_quant) if self.input_quant else x
            session.run([self.output_name], {self.input_name: xin})
        except BackendUnavailableError:
            raise
        except Exception as e:
            raise BackendUnavailableError(f"{self.card.name}: could not bind: {e}") from e
        one = _batch1(session, self._run_options)  # its probe run: not under the lock
        with self._lock:  # a call in progress finishes on the old session
            self.session = session
            self._session_run = _session_run(session)
            self._one = one
            self.providers = list(session.get_providers())
            self.fallback = fallback

    def unbind(self) -> None:
        with self._lock:
            self.session = None
            self._session_run = None
            self._one = None
            self.providers = []

    def _run(self, x: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        one = self._one
        if one is not None and len(x) == 1:
            y = one(x)
            if y is not None:
                return y
        run = self._session_run
        if run is None:  # unbound, and used by a holder outside the pool
            self.session, _ = self._open([CPU])
            self.providers, self.fallback = [CPU], UNBOUND
            run = self._session_run = _session_run(self.session)
        res: list[Any] = run(self._output_names, {self.input_name: x}, self._run_options)
        y = res[0]
        return y if type(y) is np.ndarray else np.asarray(y)


def _session_run(session: Any) -> Any:
    """The session's run: its compiled one (`_sess.run`, same arguments) on a CPU-only
    session. The Python wrapper's checks (the input's name, OrtValue ownership, WebGPU
    graph capture, retry on another execution provider) cannot fail for our one named
    numpy input on CPU, and cost ~1 us of a batch-1 run's ~7. Other providers keep the
    wrapper for its fallback retry."""
    inner = getattr(session, "_sess", None)
    if inner is not None and list(session.get_providers()) == [CPU]:
        return inner.run
    return session.run


_NP_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}

Batch1 = Callable[[npt.NDArray[np.generic]], npt.NDArray[np.generic] | None]


def _batch1(session: Any, run_options: Any) -> Batch1 | None:
    """A one-window run through an I/O binding on buffers bound once (a CPU-only session
    with static per-window shapes), or None. onnxruntime then neither wraps the input
    in a new OrtValue nor allocates the output each call: ~1 us of a batch-1 run's ~7.
    The window is copied in and the output copied out (the buffers are the binding's).
    Checked at set-up against the plain run on two probe windows; another shape or dtype
    than the bound one gets None (the plain run then says what is wrong, as before)."""
    inner = getattr(session, "_sess", None)
    if inner is None or list(session.get_providers()) != [CPU]:
        return None
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    tin, tout = _NP_TYPES.get(inp.type), _NP_TYPES.get(out.type)
    in_shape, out_shape = _one_window(inp.shape), _one_window(out.shape)
    if tin is None or tout is None or in_shape is None or out_shape is None:
        return None
    try:
        io = session.io_binding()
        xin = np.zeros(in_shape, dtype=tin)
        yout = np.zeros(out_shape, dtype=tout)
        io.bind_cpu_input(inp.name, xin)
        io.bind_output(out.name, "cpu", 0, tout, out_shape, yout.ctypes.data)
        binding, run_bound = io._iobinding, inner.run_with_iobinding
    except Exception:  # noqa: BLE001 - an onnxruntime without it: the plain run
        return None

    def one(x: npt.NDArray[np.generic]) -> npt.NDArray[np.generic] | None:
        if x.shape != xin.shape or x.dtype != xin.dtype:
            return None
        np.copyto(xin, x)
        run_bound(binding, run_options)
        y: npt.NDArray[np.generic] = yout.copy()
        return y

    one.keep = (io, xin, yout)  # type: ignore[attr-defined]  # bound by address
    # Two different windows, neither zeros: a binding that read its input only once (a
    # copy at bind time) or left a stale output would pass a probe of zeros; NaN in an
    # output (a model's own) compares equal to NaN.
    floating = np.issubdtype(tout, np.floating)
    try:
        for k in range(2):
            probe = _probe_window(k, in_shape, tin)
            want = np.asarray(inner.run([out.name], {inp.name: probe}, run_options)[0])
            got = one(probe)
            if got is None or not np.array_equal(want, got, equal_nan=floating):
                return None
    except Exception:  # noqa: BLE001 - not usable here: the plain run
        return None
    return one


def _probe_window(k: int, shape: list[int], dtype: type[np.generic]) -> npt.NDArray[np.generic]:
    """The k-th probe window of `dtype`: values spread over [-3, 3) for floats, over the
    whole range for integers, different for each k. Not numpy.random: a process that
    does not need it stays ~3 MB smaller (tests/test_lean_process.py)."""
    i = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)  # type: ignore[type-var]
        span = int(info.max) - int(info.min) + 1
        return ((i * 97 + k * 31) % span + int(info.min)).astype(dtype)
    return (((i * 0.618034 + k * 0.27) % 1.0) * 6.0 - 3.0).astype(dtype)


def _one_window(shape: Sequence[Any]) -> list[int] | None:
    """A tensor's shape for one window: its first dimension (dynamic, or 1) as 1, the
    others static; None when they are not."""
    if not shape or (isinstance(shape[0], int) and shape[0] != 1):
        return None
    dims = [1, *shape[1:]]
    return dims if all(type(d) is int and d > 0 for d in dims) else None


def _quant_from_card(spec: Any, ort_type: str) -> Quant | None:
    """Integer I/O in an ONNX graph carries no scale, so it must come from the card."""
    if "int8" not in ort_type:
        return None
    if spec.scale is None or spec.zero_point is None:
        raise BackendUnavailableError(
            f"tensor {spec.name} is {ort_type} but the card gives no scale/zero_point"
        )
    return Quant(spec.scale, spec.zero_point, "uint8" if "uint8" in ort_type else "int8")
