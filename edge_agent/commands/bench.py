"""`edge-agent bench [--json] [--select]`: raw backend vs pipeline per window, per variant.

`--select` also judges each variant's accuracy against the fp32 reference on this
device and records the fastest one within tolerance in the state dir, where streams
with variant "auto" pick it up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.errors import ModelError

if TYPE_CHECKING:
    from edge_agent.measure.bench import Figure, VariantResult
    from edge_agent.runtime.selection import Choice
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
    p.add_argument(
        "--select",
        action="store_true",
        help="record the fastest variant within the card's accuracy tolerance as this "
        "device's choice (state dir: selected_variants.json)",
    )
    p.add_argument("--state-dir", help="where --select records its choice")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge_agent.config import default_state_dir
    from edge_agent.measure.bench import (  # numpy + runtimes: only when benching
        as_json,
        bench_family,
    )

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
    choice = None
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    if args.select:
        from edge_agent.measure.bench import select_variant
        from edge_agent.runtime.selection import write_selected

        choice = select_variant(models_dir, args.family, sel.profile, res)
        write_selected(state_dir, choice, time.time())
    if args.json:
        out: dict[str, Any] = {
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "profile": sel.profile.name,
            "threads": sel.profile.threads,
            "windows": res[0].windows,
            "batch": args.batch,
            "repeats": args.repeats,
            "results": as_json(res),
            "int8_vs_fp32": _int8_vs_fp32(res),
        }
        if choice is not None:
            out["selected"] = {
                "state_file": str(state_dir / "selected_variants.json"),
                **choice.to_json(time.time()),
                "family": choice.family,
            }
        print(json.dumps(out, indent=2))
        return 0
    _print_table(args, sel.profile.name, sel.profile.threads, res)
    if choice is not None:
        _print_choice(choice, state_dir)
    return 0


def _int8_vs_fp32(res: list[VariantResult]) -> dict[str, float]:
    """int8 speed as a multiple of fp32's (batched, per backend), measured in this run."""
    by = {(r.precision, r.backend): r for r in res}
    out = {}
    for be in ("onnx", "tflite"):
        if ("int8", be) in by and ("fp32", be) in by:
            out[be] = (
                by[("fp32", be)].raw_batched_us.median / by[("int8", be)].raw_batched_us.median
            )
    return out


def _print_table(
    args: argparse.Namespace, prof: str, threads: int, res: list[VariantResult]
) -> None:
    print(
        f"edge-agent bench: {args.family}, {res[0].windows} windows, batch {args.batch}, "
        f"median of {args.repeats} (min-max), microseconds per window"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, profile {prof} ({threads} threads)"
    )
    cols = ("raw b=1", "raw batched", "pipeline")
    print(
        f"{'variant':<14}" + "".join(f"{c:>20}" for c in cols) + f"{'overhead':>12}{'pipe/raw':>9}"
    )
    for r in res:
        figs = "".join(f"{_fmt(x):>20}" for x in (r.raw_batch1_us, r.raw_batched_us, r.pipeline_us))
        ratio = r.pipeline_vs_raw_batched
        print(f"{r.variant:<14}{figs}{r.overhead_us.median:>9.1f} us{ratio:>9.0%}")
    print("saturation, one pipeline thread (median, min-max):")
    for r in res:
        w, c = r.windows_per_s, r.windows_per_cpu_s
        print(
            f"  {r.variant:<12} {w.median:>9.0f} windows/s ({w.min:.0f}-{w.max:.0f}), "
            f"{c.median:>9.0f} windows per CPU-second ({c.min:.0f}-{c.max:.0f})"
        )
    for be, ratio in _int8_vs_fp32(res).items():
        print(f"int8 vs fp32 on {be} (batched): int8 is {ratio:.2f}x the speed of fp32")


def _print_choice(choice: Choice, state_dir: Path) -> None:
    print(f"selected for {choice.family}: {choice.variant} ({choice.reason})")
    for v, why in choice.rejected:
        print(f"  not eligible: {v}: {why}")
    print(f"  recorded in {state_dir / 'selected_variants.json'}")


def _fmt(x: Figure) -> str:
    return f"{x.median:.1f} ({x.min:.0f}-{x.max:.0f})"
