"""Accelerator binding decisions, pure: which execution providers count as the
accelerator, whether a session is bound to it, and what to unbind so one more model fits
the profile's `accelerator_memory_mb`.

The model pool keeps every loaded model's bytes in host memory and binds a model to the
accelerator (an ONNX Runtime session on the profile's providers) when it is used. The
accelerator's memory is the scarcer one (a Jetson shares it with other work), so bound
models are charged against their own budget and idle ones give it up, least recently
used first (FaaSwap's scheme, sized for one device). These functions take values and
return values; the pool does the session work around them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = ["CPU", "BindPlan", "Binding", "accelerator_providers", "is_bound", "plan_bind"]

CPU = "CPUExecutionProvider"


def accelerator_providers(wanted: Sequence[str]) -> tuple[str, ...]:
    """The providers binding is for: the profile's providers other than the CPU one. A
    profile that lists only the CPU provider binds to it (no GPU: how the binding is
    tested on CPU, and what a CPU-only profile with an accelerator budget means)."""
    acc = tuple(p for p in wanted if p != CPU)
    return acc or (CPU,)


def is_bound(in_use: Sequence[str], wanted: Sequence[str]) -> bool:
    """A session using `in_use` is bound when it runs on at least one of the accelerator
    providers the profile wants (TensorRT missing but CUDA there is still bound)."""
    return any(p in in_use for p in accelerator_providers(wanted))


@dataclass(frozen=True)
class Binding:
    """A bound model as the planner sees it."""

    key: Hashable
    charge_mb: float
    pinned: bool  # a user holds it (a running stream, a request being scored)
    last_used: float  # monotonic; LRU order among idle bindings
    name: str = ""  # for the reason when nothing can be unbound


@dataclass(frozen=True)
class BindPlan:
    fits: bool
    unbind: tuple[Hashable, ...] = ()  # idle bindings to drop first, LRU first
    reason: str = ""  # why it does not fit (empty when it fits)


def plan_bind(need_mb: float, budget_mb: float, bound: Sequence[Binding]) -> BindPlan:
    """Whether a model needing `need_mb` can be bound beside `bound` within `budget_mb`,
    and which idle bindings to drop for it, least recently used first and no more than
    needed. When it cannot fit even with every idle binding dropped, nothing is dropped
    (unbinding would cost their next request a re-bind and win nothing)."""
    used = sum(b.charge_mb for b in bound)
    if used + need_mb <= budget_mb:
        return BindPlan(True)
    drop: list[Hashable] = []
    for b in sorted((b for b in bound if not b.pinned), key=lambda b: b.last_used):
        drop.append(b.key)
        used -= b.charge_mb
        if used + need_mb <= budget_mb:
            return BindPlan(True, tuple(drop))
    pinned = sum(b.charge_mb for b in bound if b.pinned)
    held = ", ".join(f"{b.name or b.key} {b.charge_mb:.1f} MB" for b in bound if b.pinned)
    return BindPlan(
        False,
        reason=(
            f"accelerator memory: needs {need_mb:.1f} MB, {pinned:.1f} of "
            f"accelerator_memory_mb = {budget_mb:g} MB bound to models in use "
            f"({held or 'none'})"
        ),
    )
