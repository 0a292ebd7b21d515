"""The model pool: every loaded model held once, accounted by measured memory.

Streams (and, later, the local serving endpoint) ask the pool for a model directory;
all users of one model variant share one loaded instance (the backend's per-instance
lock makes that safe). Each entry is charged what loading it measurably cost
(`rss_meter`: the process's resident set before and after the load, at least the model
file's size) against the profile's `model_memory_mb`; a model loaded again after an
eviction keeps the charge measured at its first load. A model some user holds is
pinned; an idle one stays loaded until room is needed, then the least recently used
goes first. A load that cannot fit even after evicting every idle model is refused
with a ConfigError naming the models held, the one asked for and the megabytes.

The first model of a runtime also carries the runtime's one-off set-up (onnxruntime:
~11 MB on x86), which is not given back when that model is evicted: the charge is
what the process grew by, so the budget errs on the safe side.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError
from edge_agent.profiles import Profile
from edge_agent.runtime.card import load_card
from edge_agent.runtime.model import LoadedModel, load_model

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
        }


class ModelPool:
    """Loaded models under a memory budget (MB). Thread-safe."""

    def __init__(
        self,
        profile: Profile,
        *,
        budget_mb: float | None = None,
        loader: Loader | None = None,
        meter: Meter = rss_meter,
    ) -> None:
        self.profile = profile
        self._budget_mb = float(profile.model_memory_mb if budget_mb is None else budget_mb)
        self._loader: Loader = loader or (lambda d, p, _u: load_model(d, p))
        self._meter = meter
        self._entries: dict[Path, PoolEntry] = {}
        self._known: dict[Path, float] = {}  # measured charges, kept across evictions
        self._lock = threading.RLock()
        self.evictions = 0
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
                "models": [e.to_json() for e in self._entries.values()],
            }

    # -- using ---------------------------------------------------------------------
    def acquire(self, directory: Path, user: str) -> LoadedModel:
        """The loaded model of `directory` for `user`, loading it if needed; pinned until
        `release(user)`. Raises ConfigError when it cannot fit beside the pinned models,
        ModelError when it does not load."""
        key = Path(directory).resolve()
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                e = self._load(key, user)
            e.users.add(user)
            e.last_used = time.monotonic()
            return e.model

    def release(self, user: str) -> None:
        """`user` holds no model any more: what only it held becomes idle (evictable)."""
        with self._lock:
            for e in self._entries.values():
                if user in e.users:
                    e.users.discard(user)
                    e.last_used = time.monotonic()

    def _estimate(self, key: Path) -> float:
        known = self._known.get(key)
        if known is not None:
            return known
        try:
            return load_card(key, verify_hash=False).path.stat().st_size / MB
        except Exception:  # noqa: BLE001 - the load itself will say what is wrong
            return 0.0

    def _load(self, key: Path, user: str) -> PoolEntry:
        need = self._estimate(key)
        self._evict_idle(need, key)
        self._check_fits(need, key, user)
        model, measured = self._meter(lambda: self._loader(key, self.profile, user))
        # A model measured once keeps that charge when it loads again: measured again in
        # a running process, the resident set also moves with other threads' allocations
        # and freed memory the allocator reuses (one model: 3.1 MB, then 0.25 MB), and a
        # budget planned from the charges would refuse a model that had fitted.
        mb = self._known.setdefault(key, measured)
        self._evict_idle(mb, key)
        self._check_fits(mb, key, user)  # the model is dropped with the error
        e = PoolEntry(key, model, mb, last_used=time.monotonic())
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
            log.info("model pool: evicted idle %s (%.1f MB)", e.model.description, e.charge_mb)
            # Dropped, not closed: memory returns when the last reference goes (a
            # swapped-out model an OTA trial still holds keeps working meanwhile).
            if self.on_evict is not None:
                self.on_evict(e)

    def _check_fits(self, need_mb: float, key: Path, user: str) -> None:
        used = self.used_mb
        if used + need_mb <= self._budget_mb:
            return
        held = ", ".join(
            f"{e.model.card.name} {e.charge_mb:.1f} MB (for {', '.join(map(repr, users))})"
            for e in self._entries.values()
            for users in [sorted(e.users)]
        )
        raise ConfigError(
            f"{user!r}: model {key.name} needs {need_mb:.1f} MB, but {used:.1f} of profile "
            f"{self.profile.name}'s model_memory_mb = {self._budget_mb:g} MB are held by "
            f"models in use ({held or 'none'}): {used + need_mb:.1f} MB would be needed. "
            "Raise model_memory_mb in the device profile, or let streams share a model "
            "(same model and variant)."
        )
