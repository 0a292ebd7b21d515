"""The model pool: every loaded model held once, accounted by measured memory.

Streams (and, later, the local serving endpoint) ask the pool for a model directory;
all users of one model variant share one loaded instance (the backend's per-instance
lock makes that safe). Each entry is charged what loading it measurably cost
(`rss_meter`: the process's resident set before and after the load, at least the model
file's size) against the profile's `model_memory_mb`; a model loaded again after an
eviction keeps the charge measured at its first load. A model some user holds is
pinned; an idle one stays loaded until room is needed, then the least recently used
goes first. A load that cannot fit even after evicting every idle model is refused,
evicting none, with a ConfigError naming the models held, the one asked for and the
megabytes. The first load of a model is planned from its file's size: when the charge
measured then is larger and does not fit, the idle models evicted for the file's size
stay evicted (once: the measured charge plans its next loads).

With an accelerator budget (the profile's `accelerator_memory_mb`), every entry keeps its
model's bytes in host memory and is bound to the accelerator (a session on the profile's
providers) when it is used: at load, and again at `acquire` after it was unbound. Bound
models are charged their file's size against that budget; when another does not fit,
idle bound models are unbound, least recently used first (their accelerator session
dropped; they stay loaded and bind again on their next use, from the bytes held). A
stream's model stays bound while the stream runs (the stream holds it); a model only
the serving endpoint uses is idle between requests. A model that cannot be bound
(provider missing or failing: not retried; no room beside the models in use: retried at
its next use) runs on CPU, with the reason in the entry's stats. The decisions are pure,
in runtime/binding.py.

The runtime library is imported before the first load is measured (onnxruntime: ~30 MB
resident on x86, the process's for good, not a model's: charged to the first model, it
kept a 42 kB model out of a 32 MB budget). The first model of a runtime still carries the
runtime's one-off set-up made with its first session (onnxruntime: ~8-9 MB on x86),
which is not given back when that model is evicted: the charge is what the process grew
by, so the budget errs on the safe side.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.profiles import Profile
from edge_agent.runtime.backend import Backend
from edge_agent.runtime.binding import CPU, Binding, BindPlan, is_bound, plan_bind
from edge_agent.runtime.card import load_card
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.runtime.registry import backend_class

__all__ = ["Meter", "ModelPool", "PoolEntry", "file_meter", "rss_meter"]

log = logging.getLogger(__name__)

MB = float(2**20)

# (model directory, profile, user) -> the loaded model (e.g. the OTA boot choice)
Loader = Callable[[Path, Profile, str], LoadedModel]
# runs a load and returns the model with what it cost, in MB
Meter = Callable[[Callable[[], LoadedModel]], tuple[LoadedModel, float]]


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _file_mb(model: LoadedModel) -> float:
    try:
        return model.card.path.stat().st_size / MB
    except OSError:
        return 0.0


def rss_meter(load: Callable[[], LoadedModel]) -> tuple[LoadedModel, float]:
    """Charge a load what the process's resident set grew by (never less than the
    model file); the file size alone where /proc is not there."""
    before = _rss_mb()
    model = load()
    after = _rss_mb()
    grew = after - before if before is not None and after is not None else 0.0
    return model, max(grew, _file_mb(model))


def file_meter(load: Callable[[], LoadedModel]) -> tuple[LoadedModel, float]:
    """Charge a load its model file's size: deterministic, for planning and tests."""
    model = load()
    return model, _file_mb(model)


@dataclass
class PoolEntry:
    key: Path  # the resolved model directory asked for
    model: LoadedModel
    charge_mb: float
    users: set[str] = field(default_factory=set)
    last_used: float = 0.0  # monotonic; LRU order among idle entries
    # -- the accelerator binding (see the module docstring) --
    bound: bool = False  # a session on the profile's accelerator providers serves it
    accelerator_mb: float = 0.0  # charged against accelerator_memory_mb while bound
    bind_count: int = 0
    last_bind_ms: float | None = None  # the load's whole time for the first binding
    fallback: str = ""  # why it is not bound, when an accelerator is wanted
    bind_failed: bool = False  # providers missing or failing: runs on CPU, not retried

    @property
    def pinned(self) -> bool:
        return bool(self.users)

    def to_json(self) -> dict[str, Any]:
        c = self.model.card
        return {
            "model": c.name,
            "version": c.version,
            "dir": str(c.directory),
            "charge_mb": round(self.charge_mb, 2),
            "users": sorted(self.users),
            "providers": list(self.model.backend.providers),
            "bound": self.bound,
            "accelerator_mb": round(self.accelerator_mb, 2),
            "bind_count": self.bind_count,
            "last_bind_ms": None if self.last_bind_ms is None else round(self.last_bind_ms, 2),
            "fallback": self.fallback or self.model.backend.fallback,
        }


class ModelPool:
    """Loaded models under a memory budget (MB). Thread-safe."""

    def __init__(
        self,
        profile: Profile,
        *,
        budget_mb: float | None = None,
        accelerator_mb: float | None = None,
        loader: Loader | None = None,
        meter: Meter = rss_meter,
    ) -> None:
        self.profile = profile
        self._budget_mb = float(profile.model_memory_mb if budget_mb is None else budget_mb)
        acc = profile.accelerator_memory_mb if accelerator_mb is None else accelerator_mb
        self._accel_mb = float(acc)  # 0: no accelerator budget, models bound at load
        self._loader: Loader = loader or (lambda d, p, _u: load_model(d, p))
        self._meter = meter
        self._entries: dict[Path, PoolEntry] = {}
        self._known: dict[Path, float] = {}  # measured charges, kept across evictions
        self._lock = threading.RLock()
        self.evictions = 0
        self.unbinds = 0
        # called with an entry just loaded / about to be dropped (e.g. its scheduler)
        self.on_load: Callable[[PoolEntry], object] | None = None
        self.on_evict: Callable[[PoolEntry], object] | None = None

    # -- looking -------------------------------------------------------------------
    @property
    def budget_mb(self) -> float:
        return self._budget_mb

    def set_budget(self, mb: float) -> None:
        """A new budget; idle models are evicted until the pool fits it (pinned stay)."""
        with self._lock:
            self._budget_mb = float(mb)
            self._evict_idle(0.0, None)

    @property
    def accelerator_budget_mb(self) -> float:
        return self._accel_mb

    @property
    def accelerator_used_mb(self) -> float:
        with self._lock:
            return sum(e.accelerator_mb for e in self._entries.values() if e.bound)

    @property
    def used_mb(self) -> float:
        with self._lock:
            return sum(e.charge_mb for e in self._entries.values())

    def entries(self) -> list[PoolEntry]:
        with self._lock:
            return list(self._entries.values())

    def entry_of(self, model: LoadedModel) -> PoolEntry | None:
        """The entry whose loaded instance `model` shares its backend with."""
        with self._lock:
            for e in self._entries.values():
                if e.model.backend is model.backend:
                    return e
        return None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "budget_mb": self._budget_mb,
                "used_mb": round(self.used_mb, 2),
                "evictions": self.evictions,
                "accelerator_budget_mb": self._accel_mb,
                "accelerator_used_mb": round(self.accelerator_used_mb, 2),
                "unbinds": self.unbinds,
                "models": [e.to_json() for e in self._entries.values()],
            }

    # -- using ---------------------------------------------------------------------
    def acquire(self, directory: Path, user: str, *, owner: str | None = None) -> LoadedModel:
        """The loaded model of `directory` for `user`, loading it if needed; pinned until
        `release(user)`. `owner` (default `user`): who a load is for in the loader's
        records and in a refusal, for users made one per request (the serving
        endpoint's: `owner` "serving"), which would otherwise leave a record each.
        Raises ConfigError when it cannot fit beside the pinned models, ModelError when
        it does not load."""
        # a loaded model's own key skips resolve's syscalls, and a Path is not built again
        # (its parse and uncached hash: ~5 us of the serving endpoint's every request)
        key = directory if isinstance(directory, Path) else Path(directory)
        with self._lock:
            e = self._entries.get(key)  # one look-up: Path's hash is a Python call
            if e is None:
                resolved = key.resolve()
                # An entry is keyed by the caller's own Path when it is already
                # resolved (the serving endpoint's, kept per variant): its next
                # look-ups then match by identity, not by Path.__eq__ (a Python call).
                key = key if resolved == key else resolved
                e = self._entries.get(key)
            if e is None:
                e = self._load(key, owner or user)
            elif self._accel_mb > 0 and not e.bound and not e.bind_failed:
                self._bind(e)
            e.users.add(user)
            e.last_used = time.monotonic()
            return e.model

    def has(self, directory: Path) -> bool:
        """`directory`'s model is loaded (as `acquire` keys it; no load, no pin)."""
        return directory in self._entries or directory.resolve() in self._entries

    def release(self, user: str) -> None:
        """`user` holds no model any more: what only it held becomes idle (evictable)."""
        with self._lock:
            for e in self._entries.values():
                if user in e.users:
                    e.users.discard(user)
                    e.last_used = time.monotonic()

    def _card_facts(self, key: Path) -> tuple[float, type[Backend] | None]:
        """(the model file's MB, its backend class) from its card, read once a load; 0.0
        and None for what cannot be read (the load itself will say what is wrong)."""
        try:
            card = load_card(key, verify_hash=False)
        except Exception:  # noqa: BLE001 - the load itself will say what is wrong
            return 0.0, None
        try:
            file_mb = card.path.stat().st_size / MB
        except OSError:
            file_mb = 0.0
        try:
            return file_mb, backend_class(card.backend)
        except Exception:  # noqa: BLE001 - the load itself will say what is wrong
            return file_mb, None

    def _load(self, key: Path, user: str) -> PoolEntry:
        file_mb, backend = self._card_facts(key)
        need = self._known.get(key, file_mb)
        self._check_fits(need, key, user)  # before evicting: a refused load evicts none
        self._evict_idle(need, key)
        profile, plan, acc_mb = self.profile, BindPlan(False), 0.0
        if self._accel_mb > 0:
            acc_mb = file_mb if backend is not None else 0.0
            if backend is not None and backend.bindable:
                plan = plan_bind(acc_mb, self._accel_mb, self._bindings())
                if plan.fits:
                    self._unbind(plan.unbind)
                else:  # loaded on CPU; bound at a later use when there is room
                    profile = replace(profile, onnx_providers=(CPU,))
        if backend is not None:
            # not measured: the runtime library is the process's, not the model's
            with contextlib.suppress(Exception):  # the load itself will say what is wrong
                backend.load_runtime()
        t0 = time.perf_counter()
        model, measured = self._meter(lambda: self._loader(key, profile, user))
        load_ms = (time.perf_counter() - t0) * 1e3
        # A model measured once keeps that charge when it loads again: measured again in
        # a running process, the resident set also moves with other threads' allocations
        # and freed memory the allocator reuses (one model: 3.1 MB, then 0.25 MB), and a
        # budget planned from the charges would refuse a model that had fitted.
        mb = self._known.setdefault(key, measured)
        self._check_fits(mb, key, user)  # the model is dropped with the error
        self._evict_idle(mb, key)
        e = PoolEntry(key, model, mb, last_used=time.monotonic())
        if self._accel_mb <= 0:
            # Nothing re-binds without an accelerator budget: the host copy of the file
            # kept for re-binds would only double the model's memory.
            model.backend.model_bytes = b""
        if plan.reason:  # no room on the accelerator: loaded on CPU
            e.fallback = plan.reason
        else:
            self._record_bind(e, load_ms, acc_mb)
        self._entries[key] = e
        log.info(
            "model pool: loaded %s (%.1f MB measured; %.1f of %g MB in use)",
            model.description,
            mb,
            self.used_mb,
            self._budget_mb,
        )
        if self.on_load is not None:
            self.on_load(e)
        return e

    def _evict_idle(self, need_mb: float, keep: Path | None) -> None:
        """Drop idle entries, least recently used first, until `need_mb` more fits."""
        idle = sorted(
            (e for e in self._entries.values() if not e.pinned and e.key != keep),
            key=lambda e: e.last_used,
        )
        for e in idle:
            if self.used_mb + need_mb <= self._budget_mb:
                return
            del self._entries[e.key]
            self.evictions += 1
            if e.bound and self._accel_mb > 0:  # its accelerator memory goes back now
                self._unbind_entry(e)
            log.info("model pool: evicted idle %s (%.1f MB)", e.model.description, e.charge_mb)
            # Dropped, not closed: memory returns when the last reference goes (a
            # swapped-out model an OTA trial still holds keeps working meanwhile).
            if self.on_evict is not None:
                self.on_evict(e)

    # -- binding (decisions in runtime/binding.py) ------------------------------------
    def _bindings(self) -> list[Binding]:
        return [
            Binding(e.key, e.accelerator_mb, e.pinned, e.last_used, e.model.card.name)
            for e in self._entries.values()
            if e.bound
        ]

    def _record_bind(self, e: PoolEntry, ms: float, acc_mb: float) -> None:
        """What a session just opened on the profile's providers turned out to be."""
        backend = e.model.backend
        if not backend.bindable:
            return
        e.bound = is_bound(backend.providers, self.profile.onnx_providers)
        if e.bound:
            e.accelerator_mb = acc_mb
            e.bind_count += 1
            e.last_bind_ms = ms
            e.fallback = ""
        else:  # the accelerator is missing or failed to start: CPU, and no retrying
            e.bind_failed = True
            e.fallback = backend.fallback or "not bound to " + ", ".join(backend.providers)

    def _bind(self, e: PoolEntry) -> None:
        """Bind an unbound entry about to be used, or say why it runs on CPU."""
        backend = e.model.backend
        if not backend.bindable:
            return
        acc_mb = len(e.model.backend.model_bytes) / MB
        plan = plan_bind(acc_mb, self._accel_mb, self._bindings())
        try:
            if plan.fits:
                self._unbind(plan.unbind)
                t0 = time.perf_counter()
                backend.bind(self.profile.onnx_providers)
                self._record_bind(e, (time.perf_counter() - t0) * 1e3, acc_mb)
                return
            e.fallback = plan.reason
            log.info("model pool: %s stays on CPU: %s", e.model.description, plan.reason)
            if not backend.providers:  # unbound: serve from a CPU session of the bytes
                backend.bind([CPU])
        except EdgeAgentError as err:  # a re-bind that fails leaves the model on CPU
            e.bind_failed, e.fallback = True, str(err)[:300]
            log.warning("model pool: %s: %s; on CPU", e.model.description, e.fallback)
            backend.bind([CPU])

    def _unbind(self, keys: Iterable[Hashable]) -> None:
        for k in keys:
            self._unbind_entry(self._entries[Path(str(k))])

    def _unbind_entry(self, e: PoolEntry) -> None:
        e.model.backend.unbind()
        e.bound, e.accelerator_mb = False, 0.0
        self.unbinds += 1
        log.info("model pool: unbound idle %s from the accelerator", e.model.description)

    def _check_fits(self, need_mb: float, key: Path, user: str) -> None:
        """ConfigError unless `need_mb` fits beside the models in use (pinned): idle ones
        can be evicted, so they neither count nor are named. Checked before evicting,
        so a load refused anyway leaves the idle models loaded (each request for a model
        too big beside a stream's evicted every other, which then loaded again)."""
        pinned = [e for e in self._entries.values() if e.pinned]
        used = sum(e.charge_mb for e in pinned)
        if used + need_mb <= self._budget_mb:
            return
        held = ", ".join(
            f"{e.model.card.name} {e.charge_mb:.1f} MB (for {', '.join(map(repr, users))})"
            for e in pinned
            for users in [sorted(e.users)]
        )
        raise ConfigError(
            f"{user!r}: model {key.name} needs {need_mb:.1f} MB, but {used:.1f} of profile "
            f"{self.profile.name}'s model_memory_mb = {self._budget_mb:g} MB are held by "
            f"models in use ({held or 'none'}): {used + need_mb:.1f} MB would be needed. "
            "Raise model_memory_mb in the device profile, or let streams share a model "
            "(same model and variant)."
        )
