"""Check that models bind to this device's accelerator through the model pool.

    python3 -m edge_agent.runtime.accel_check [--profile NAME] [--json]

Loads a few bundled ONNX models into a model pool whose accelerator budget fits all but
one of them, uses each in turn and then the first again (so one is unbound and bound
again from the bytes it holds), and compares every score with a plain CPU session of
the same model within the card's golden tolerance. Prints the providers on offer, then
per model the providers in use, whether it is bound, its bind count and last bind time,
and the fallback reason when it is not bound. Exit 0 when every model was bound and
scored like the CPU, 1 otherwise, 2 on bad arguments. The commands a technician runs on
a Jetson, and what their output means, are in docs/install.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import EdgeAgentError
from edge_agent.profiles import Profile, detect, load_profiles, read_facts, select
from edge_agent.resources import find_resource_dir
from edge_agent.runtime.binding import CPU
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.runtime.pool import ModelPool

__all__ = ["main"]

DEFAULT_MODELS = ("vibration-ae-fp32-onnx", "inspection-ae-fp32-onnx", "skab-ae-fp32-onnx")
WINDOWS = 64


def _windows(model: LoadedModel) -> npt.NDArray[np.float32]:
    shape = (WINDOWS, *(int(s) for s in model.card.input.shape[1:] if s is not None))
    return np.random.default_rng(7).normal(0.0, 1.5, shape).astype(np.float32)


def _profile(name: str, providers: str | None) -> Profile:
    profiles = load_profiles()
    sel = detect(read_facts(), profiles) if name == "auto" else select(name, profiles)
    p = sel.profile
    if providers:
        p = replace(p, onnx_providers=tuple(s.strip() for s in providers.split(",")))
    return p


def _available() -> list[str]:
    import onnxruntime as ort

    return [f"onnxruntime {ort.__version__}", *ort.get_available_providers()]


def run_check(
    profile: Profile, dirs: Sequence[Path], accelerator_mb: float | None = None
) -> dict[str, Any]:
    """The check's findings (pure of printing): per model and overall."""
    sizes = [(d / "model.onnx").stat().st_size / 2**20 for d in dirs]
    budget = accelerator_mb or (sum(sizes) - min(sizes) / 2 if len(sizes) > 1 else sum(sizes))
    pool = ModelPool(profile, accelerator_mb=budget)
    cpu = replace(profile, name=f"{profile.name} (CPU)", onnx_providers=(CPU,))
    results: dict[str, dict[str, Any]] = {}
    ever_bound: dict[str, bool] = {}
    for d in [*dirs, dirs[0]]:  # the first again: unbound by then, bound again
        r = results.setdefault(d.name, {"model": d.name, "scores_match": True, "error": ""})
        try:
            m = pool.acquire(d, "accel-check")
            try:
                x = _windows(m)
                got = m.scores_normalized(x)
            finally:
                pool.release("accel-check")
            e = pool.entry_of(m)
            ever_bound[d.name] = ever_bound.get(d.name, False) or bool(e and e.bound)
            want = load_model(d, cpu).scores_normalized(x)
            g = m.card.golden
            ok = bool(np.allclose(got, want, atol=g.atol, rtol=g.rtol))
            r["scores_match"] = r["scores_match"] and ok
            r["max_diff"] = float(np.max(np.abs(got - want)))
        except EdgeAgentError as err:
            r["error"], r["scores_match"] = str(err), False
    snap = pool.snapshot()
    for s in snap["models"]:
        name = Path(s["dir"]).name
        if name in results:
            results[name].update(s)
            results[name]["ever_bound"] = ever_bound.get(name, False)
    ok = all(r.get("ever_bound") and r["scores_match"] for r in results.values())
    if len(dirs) > 1:  # the first model must have been unbound and bound again
        ok = ok and snap["unbinds"] >= 1
    return {
        "ok": ok,
        "profile": profile.name,
        "wanted": list(profile.onnx_providers),
        "accelerator_budget_mb": round(budget, 3),
        "unbinds": snap["unbinds"],
        "models": list(results.values()),
    }


def _line(r: dict[str, Any]) -> str:
    ok = r.get("ever_bound") and r["scores_match"]
    mark = "ok  " if ok else "FAIL"
    if r["error"] and "providers" not in r:
        return f"[{mark}] {r['model']}: {r['error']}"
    ms = r.get("last_bind_ms")
    state = "bound" if r.get("bound") else "unbound now" if r.get("ever_bound") else "not bound"
    parts = [
        f"[{mark}] {r['model']}: {state}, providers {', '.join(r['providers']) or '-'}",
        f"binds {r['bind_count']}" + (f", last {ms:.1f} ms" if ms is not None else ""),
        "scores match CPU" if r["scores_match"] else "SCORES DIFFER FROM CPU",
    ]
    if "max_diff" in r:
        parts[-1] += f" (max diff {r['max_diff']:.2g})"
    if r.get("fallback"):
        parts.append(f"fallback: {r['fallback']}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m edge_agent.runtime.accel_check")
    ap.add_argument("--profile", default="auto", help="device profile (default: detected)")
    ap.add_argument("--providers", help="comma-separated, instead of the profile's")
    ap.add_argument("--models-dir", type=Path, help="default: the bundled models")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="ONNX model dirs")
    ap.add_argument("--accelerator-mb", type=float, help="default: all but one model fit")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="onnxruntime's own log, in full")
    args = ap.parse_args(argv)
    try:
        profile = _profile(args.profile, args.providers)
        base = args.models_dir or find_resource_dir("models")
        if base is None:
            raise EdgeAgentError("no models directory found (use --models-dir)")
        dirs = [Path(base) / n.strip() for n in args.models.split(",") if n.strip()]
        missing = [str(d) for d in dirs if not (d / "model.onnx").is_file()]
        if not dirs or missing:
            raise EdgeAgentError(f"no ONNX model in: {', '.join(missing) or 'nothing named'}")
        available = _available()
        if args.verbose:  # why a provider's libraries did not load is only in this log
            import onnxruntime as ort

            ort.set_default_logger_severity(0)
    except (EdgeAgentError, ImportError) as e:
        print(f"accel-check: {e}", file=sys.stderr)
        return 2
    found = run_check(profile, dirs, args.accelerator_mb)
    found["available"] = available
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print(f"{available[0]}; providers available: {', '.join(available[1:])}")
        print(
            f"profile {found['profile']} wants {', '.join(found['wanted'])}; accelerator "
            f"budget for the check {found['accelerator_budget_mb']} MB "
            f"(fits {max(len(dirs) - 1, 1)} of {len(dirs)})"
        )
        for r in found["models"]:
            print(_line(r))
        bound_on = sorted({p for r in found["models"] for p in r.get("providers", [])})
        verdict = "PASS" if found["ok"] else "FAIL"
        print(
            f"accel-check: {verdict} ({found['unbinds']} unbind(s); providers in use at the "
            f"end: {', '.join(bound_on) or 'none'})"
        )
    return 0 if found["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
