"""`edge-agent bench [--json]`: raw backend vs pipeline per window, per model variant."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.errors import ModelError

if TYPE_CHECKING:
    from edge_agent.bench import Figure
from edge_agent.profiles import load_profiles, select
from edge_agent.resources import find_resource_dir

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure backend and pipeline speed per model variant")
    p.add_argument("--family", default="vibration-ae")
    p.add_argument("--models-dir")
    p.add_argument("--windows", type=int, default=2048)
    p.add_argument("--batch", type=int, default=64, help="windows per call (the default max_batch)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge_agent.bench import as_json, bench_family  # numpy + runtimes: only when benching

    models_dir = Path(args.models_dir) if args.models_dir else find_resource_dir("models")
    if models_dir is None:
        raise ModelError("no models directory found (use --models-dir)")
    sel = select(args.profile, load_profiles())
    res = bench_family(
        models_dir,
        args.family,
        sel.profile,
        windows=args.windows,
        batch=args.batch,
        repeats=args.repeats,
    )
    if not res:
        raise ModelError(f"no runnable variants of {args.family!r} in {models_dir}")
    if args.json:
        print(
            json.dumps(
                {
                    "machine": platform.platform(),
                    "profile": sel.profile.name,
                    "results": as_json(res),
                },
                indent=2,
            )
        )
        return 0
    print(
        f"edge-agent bench: {args.family}, {res[0].windows} windows, batch {args.batch}, "
        f"median of {args.repeats} (min-max), microseconds per window"
    )
    print(
        f"machine: {platform.platform()}, profile {sel.profile.name} "
        f"({sel.profile.threads} threads)"
    )
    cols = ("raw b=1", "raw batched", "pipeline")
    print(
        f"{'variant':<14}" + "".join(f"{c:>20}" for c in cols) + f"{'overhead':>12}{'pipe/raw':>9}"
    )
    for r in res:
        figs = "".join(f"{_fmt(x):>20}" for x in (r.raw_batch1_us, r.raw_batched_us, r.pipeline_us))
        variant = f"{r.precision}-{r.backend}"
        ratio = r.pipeline_vs_raw_batched
        print(f"{variant:<14}{figs}{r.overhead_us.median:>9.1f} us{ratio:>9.0%}")
    by = {(r.precision, r.backend): r for r in res}
    for be in ("onnx", "tflite"):
        if ("int8", be) in by and ("fp32", be) in by:
            ratio = by[("fp32", be)].raw_batched_us.median / by[("int8", be)].raw_batched_us.median
            print(f"int8 vs fp32 on {be} (batched): int8 is {ratio:.2f}x the speed of fp32")
    return 0


def _fmt(x: Figure) -> str:
    return f"{x.median:.1f} ({x.min:.0f}-{x.max:.0f})"
