"""CPU time per sample of the demo signal generator (edge_agent/sources/synth_signal.py).

    python scripts/bench_synth_signal.py [--baseline-root DIR] [--rounds 7] [--json OUT]

`render(i * 1024, 1024)` in a loop, as the demo source renders ahead, timed with
`time.process_time`: with the anomalies off (the matrix's streams) and on (the demo). With
--baseline-root, another checkout's generator (e.g. `git archive REV | tar -x -C DIR`) in
the same process, the two alternated round after round; the median of the rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 1024  # the demo source's render-ahead
BLOCKS = 300  # per round: ~0.3 M samples


def _load(root: Path, name: str) -> ModuleType:
    """That checkout's synth_signal, under its own module name (it imports only numpy)."""
    path = root / "edge_agent" / "sources" / "synth_signal.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no module at {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _ns_per_sample(mod: ModuleType, anomalies: bool, round_: int) -> float:
    sig = mod.SyntheticSignal(mod.SignalSpec(seed=1, anomalies=anomalies))
    first = round_ * BLOCKS  # fresh stretches of signal each round
    sig.render(first * BLOCK, BLOCK)
    c0 = time.process_time()
    for i in range(first, first + BLOCKS):
        sig.render(i * BLOCK, BLOCK)
    return (time.process_time() - c0) / (BLOCKS * BLOCK) * 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-root", help="also time this checkout's generator")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()
    mods = {"this": _load(ROOT, "synth_this")}
    if args.baseline_root:
        mods = {"baseline": _load(Path(args.baseline_root), "synth_baseline"), **mods}
    runs: dict[str, dict[str, list[float]]] = {k: {"off": [], "on": []} for k in mods}
    for r in range(args.rounds):
        for key in mods if r % 2 == 0 else reversed(mods):
            for anomalies in (False, True):
                ns = _ns_per_sample(mods[key], anomalies, r)
                runs[key]["on" if anomalies else "off"].append(ns)
    out: dict[str, Any] = {"block": BLOCK, "rounds": args.rounds, "runs": runs, "median": {}}
    for key, by in runs.items():
        med = {a: statistics.median(v) for a, v in by.items()}
        out["median"][key] = med
        print(
            f"{key:8} render(i*{BLOCK}, {BLOCK}): {med['off']:6.1f} ns/sample anomalies off "
            f"({min(by['off']):.1f}-{max(by['off']):.1f}), {med['on']:6.1f} on "
            f"({min(by['on']):.1f}-{max(by['on']):.1f}); {med['off'] * 16 / 1000:.2f} us "
            "per window at hop 16"
        )
    if "baseline" in runs:
        b, t = out["median"]["baseline"], out["median"]["this"]
        off, on = b["off"] / t["off"], b["on"] / t["on"]
        print(f"baseline / this: {off:.1f}x anomalies off, {on:.1f}x on")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
