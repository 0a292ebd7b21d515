"""Per-turn CPU cost of the streams, for `bench_agent.py --scaling --turn-costs`
(measurement only, never shipped).

bench_agent puts this folder first on the agent's PYTHONPATH and names a file in
EDGE_AGENT_TURN_COSTS; Python imports this module at start-up (site's sitecustomize
hook). It wraps StreamRuntime._turn as the module is imported and records, for each
turn that scored windows, the turn thread's CPU seconds (time.thread_time), the windows
it scored and the whole process's CPU seconds at its start; at exit it writes them as
JSON: {"cpu_s", "windows", "at_s" (the turn's start, seconds after the first turn),
"process_cpu_s"}: the CPU outside the turns (status, supervision, MQTT, the scheduler's
worker) is the process's CPU between turns less theirs.

Why: on a shared VM the host slows the whole guest for seconds at a time (every phase
of a turn, onnxruntime's own run included, ~1.5-1.8x as long), so two runs' windows/s
differ by that much whatever the code does. The turns of the quiet stretches, taken
from each run's own distribution, show what a window costs the code.
"""

from __future__ import annotations

import atexit
import importlib.abc
import json
import os
import sys
import time
from typing import Any

_OUT = os.environ.get("EDGE_AGENT_TURN_COSTS")
# (the turn's thread CPU s, windows, start, the whole process's CPU s at its start): one
# append a turn
_TURNS: list[tuple[float, int, float, float]] = []


def _patch(m: Any) -> None:
    orig = m.StreamRuntime._turn
    cpu, clock, proc = time.thread_time, time.perf_counter, time.process_time

    def _turn(self: Any, *a: Any, **kw: Any) -> Any:
        p0, c0, t0, w0 = proc(), cpu(), clock(), self.pipeline.stats.windows
        got = orig(self, *a, **kw)
        n = self.pipeline.stats.windows - w0
        if n:  # one tuple: turns run on several workers, three appends could interleave
            _TURNS.append((cpu() - c0, n, t0, p0))
        return got

    m.StreamRuntime._turn = _turn


class _After(importlib.abc.MetaPathFinder):
    """Patches edge_agent.streams right after it is executed."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "edge_agent.streams":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None or spec.loader is None:
                continue
            run = spec.loader.exec_module

            def exec_module(module: Any, _run: Any = run) -> None:
                _run(module)
                _patch(module)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec
        return None


def _dump() -> None:
    if _OUT:
        turns = sorted(_TURNS, key=lambda r: r[2])
        first = turns[0][2] if turns else 0.0
        with open(_OUT, "w") as f:
            json.dump(
                {
                    "cpu_s": [r[0] for r in turns],
                    "windows": [r[1] for r in turns],
                    "at_s": [r[2] - first for r in turns],
                    "process_cpu_s": [r[3] for r in turns],
                },
                f,
            )


if _OUT:
    sys.meta_path.insert(0, _After())
    atexit.register(_dump)
