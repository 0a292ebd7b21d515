"""A meta-path finder that runs a patch on a module right after the module executes:
the measurement-only sitecustomize hooks (scripts/latency_stages, scripts/turn_costs)
wrap the agent's own functions this way, without touching its code. Never shipped."""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["AfterImport"]


class AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a module named in `patches`, takes the spec the other
    finders give and makes its loader run `patches[name](module)` after the module."""

    def __init__(self, patches: Mapping[str, Callable[[Any], None]]) -> None:
        self._patches = patches

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = self._patches.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None or spec.loader is None:
                continue
            run = spec.loader.exec_module

            def exec_module(module: Any, _run: Any = run, _patch: Any = patch) -> None:
                _run(module)
                _patch(module)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec
        return None
