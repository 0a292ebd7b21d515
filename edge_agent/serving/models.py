"""Model names -> pooled models, scored on the shared per-model scheduler.

A request names a model family (the device's chosen variant, as a stream's "auto"
would get it) or an exact variant (a model directory name); only names of the bundled
models directory are accepted, never paths. Each request holds its model in the pool
only while it is scored (a pool user of its own), so a model the endpoint asked for
is loaded on demand and, once idle, evicted like any other; a running stream's model
stays pinned by the stream. Windows go to the model's scheduler as best-effort work
with a deadline: real-time streams are served first, and what cannot be served in
time is refused at once (OverloadError), never queued without bound.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ConfigError, DeadlineError, ModelError, OverloadError
from edge_agent.profiles import Profile
from edge_agent.runtime.card import ModelCard
from edge_agent.runtime.model import LoadedModel, find_models, resolve_model_dir
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import Priority, SchedulerSet
from edge_agent.serving.protocol import ModelSpec, ProtocolError

__all__ = ["Catalogue", "Scorer", "StreamView"]

PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite"}
WORKER_WAIT_S = 1.0  # a model just loaded: its scheduler's worker is starting
GRACE_S = 1.0  # past the deadline, a request still unanswered is given up
# Each request holds its model as a pool user of its own ("serving#N", released when it is
# answered); the pool's loads and refusals name them all "serving", or every load the
# endpoint causes would leave a record of its own (the OTA boot's model sources in status)
POOL_OWNER = "serving"


@dataclass(frozen=True)
class StreamView:
    """What a request with parameters.stream borrows from a running stream."""

    model: LoadedModel  # with the stream's normalisation (e.g. its calibration)
    threshold: float


class Catalogue:
    """The names the endpoint answers to: every bundled variant and every family."""

    def __init__(self, models_dir: Path, profile: Profile, state_dir: Path | None = None) -> None:
        self.models_dir = models_dir
        self.profile = profile
        self.state_dir = state_dir
        self._cards = {c.name: c for c in find_models(models_dir)}
        self.families = sorted({c.family for c in self._cards.values()})
        # family -> its variant, resolved once (as a stream's "auto" is, at its start):
        # resolving reads every card, ~0.5 ms, as much as scoring a request
        self._chosen: dict[str, ModelCard] = {}
        self._specs: dict[str, ModelSpec] = {}  # by the name asked for

    def names(self) -> list[str]:
        return sorted([*self._cards, *self.families])

    def resolve(self, name: str) -> ModelCard:
        """The card served under `name`; ProtocolError(404) for a name not served."""
        card = self._cards.get(name)
        if card is not None:
            return card
        if name not in self.families:
            raise ProtocolError(
                404, f"model {name!r} is not served here (GET /v2/models lists the names)"
            )
        chosen = self._chosen.get(name)
        if chosen is None:
            try:
                d = resolve_model_dir(name, "auto", self.profile, self.models_dir, self.state_dir)
            except ModelError as e:
                raise ProtocolError(404, str(e)) from None
            chosen = self._chosen[name] = self._cards[d.name]
        return chosen

    def spec(self, name: str) -> ModelSpec:
        spec = self._specs.get(name)
        if spec is None:  # made once a name: a frozen dataclass is ~2 us to build
            spec = self._specs[name] = self._spec(name)
        return spec

    def _spec(self, name: str) -> ModelSpec:
        c = self.resolve(name)
        pre = c.preprocessing
        return ModelSpec(
            name=name,
            variant=c.name,
            family=c.family,
            version=c.version,
            platform=PLATFORMS.get(c.backend, c.backend),
            input_name=c.input.name,
            window=pre.window,
            columns=pre.columns,
            threshold=c.threshold,
        )


class Scorer:
    """Scores raw windows of a named model through the pool and its scheduler."""

    def __init__(
        self,
        catalogue: Catalogue,
        pool: ModelPool,
        schedulers: SchedulerSet,
        streams: Callable[[str], StreamView | None] = lambda _name: None,
    ) -> None:
        self.catalogue = catalogue
        self.pool = pool
        self.schedulers = schedulers
        self.streams = streams
        self._ids = itertools.count(1)
        self.refused = 0  # requests refused as overload (status, tests)
        self._lock = threading.Lock()
        self._dirs: dict[str, Path] = {}  # variant -> its directory (a join per request)

    def _dir(self, variant: str) -> Path:
        d = self._dirs.get(variant)
        if d is None:
            # resolved once: the pool then finds it by its key without resolving again
            d = self._dirs[variant] = (self.catalogue.models_dir / variant).resolve()
        return d

    def loaded(self, spec: ModelSpec) -> bool:
        """`spec`'s model is in the pool now (a request for it loads nothing)."""
        return self.pool.has(self._dir(spec.variant))

    def score(
        self,
        spec: ModelSpec,
        windows: npt.NDArray[np.float32],
        budget_s: float,
        stream: str | None = None,
    ) -> tuple[npt.NDArray[np.float64], float]:
        """(scores (n,), threshold) of raw `windows` (n, window, columns) by the model
        `spec` names, within `budget_s` seconds of the model and its scheduler being
        there (a model loaded on demand is not charged its load time). Raises
        ProtocolError: 503 (overload, deadline, no room in the model memory budget),
        400 (unknown stream), 500."""
        user = f"serving#{next(self._ids)}"
        try:
            model = self.pool.acquire(self._dir(spec.variant), user, owner=POOL_OWNER)
        except ConfigError as e:  # the pinned models leave no room
            self._count()
            raise ProtocolError(503, str(e), retry_after_s=5.0) from None
        except ModelError as e:
            raise ProtocolError(500, f"model {spec.variant} does not load: {e}") from None
        try:
            use, threshold = self._with_stream(model, spec, stream)
            return self._run(use, use.normalize(windows), budget_s), threshold
        finally:
            self.pool.release(user)

    def _with_stream(
        self, model: LoadedModel, spec: ModelSpec, stream: str | None
    ) -> tuple[LoadedModel, float]:
        if stream is None:
            return model, model.card.threshold
        view = self.streams(stream)
        if view is None:
            raise ProtocolError(400, f"parameters.stream: no stream {stream!r} runs here")
        if view.model.card.name != spec.variant:
            raise ProtocolError(
                400,
                f"parameters.stream: stream {stream!r} serves {view.model.card.name}, "
                f"not {spec.variant}",
            )
        # the stream's normalisation, on the pooled instance's backend (the scheduler's)
        if view.model.backend is model.backend:
            return view.model, view.threshold
        return model, view.threshold

    def _count(self) -> None:
        with self._lock:
            self.refused += 1

    def _run(
        self, model: LoadedModel, x: npt.NDArray[np.float32], budget_s: float
    ) -> npt.NDArray[np.float64]:
        sched = self.schedulers.for_model(model)
        until = time.monotonic() + WORKER_WAIT_S
        while sched is None or not sched.running:
            if time.monotonic() >= until:
                self._count()
                raise ProtocolError(
                    503, f"model {model.card.name}: its scheduler is not running", 1.0
                )
            time.sleep(0.005)
            sched = self.schedulers.for_model(model)
        deadline = time.monotonic() + budget_s  # the worker is there: the clock starts
        try:
            # the worker idle and nothing queued: scored here, without the hand-over
            now = sched.try_now(model, x, deadline=deadline)
            if now is not None:
                return now
            r = sched.submit(model, x, priority=Priority.BEST_EFFORT, deadline=deadline)
        except OverloadError as e:
            self._count()
            raise _overload(e) from None
        except ModelError as e:
            raise ProtocolError(500, f"model {model.card.name}: {e}") from None
        if not r.done.wait(max(0.0, deadline - time.monotonic()) + GRACE_S):
            self._count()
            raise ProtocolError(
                503, f"model {model.card.name}: not scored in time", 1.0, deadline=True
            )
        if isinstance(r.error, OverloadError):
            self._count()
            raise _overload(r.error)
        if r.error is not None:
            raise ProtocolError(500, f"model {model.card.name}: {r.error}")
        assert r.scores is not None
        return r.scores


def _overload(e: OverloadError) -> ProtocolError:
    """The scheduler's refusal as the protocol's 503, saying whether it was for the
    deadline (DeadlineError) or for a full queue."""
    return ProtocolError(503, str(e), retry_after_s=1.0, deadline=isinstance(e, DeadlineError))
