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
import json
import os
import sys
import time
from typing import Any

# the shared finder beside these hooks (scripts/import_hooks), found without an install
_HOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "import_hooks")
sys.path.insert(0, _HOOKS)
from after_import import AfterImport  # noqa: E402 - found through the path just added

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
    sys.meta_path.insert(0, AfterImport({"edge_agent.streams": _patch}))
    atexit.register(_dump)
