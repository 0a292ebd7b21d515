#!/usr/bin/env python3
"""Build time and model size of `edge-agent model new` per family and channel count.

    .venv/bin/python scripts/bench_model_new.py [--channels 1 8 32] [--rows 3000]

A synthetic normal recording (per channel: a level, a slow cycle, noise; 1 row/s) is
written as CSV; the command runs as a user runs it (a subprocess, interpreter start and
imports included) with its defaults (window 10, hop 1, ae: 60 epochs). Prints a
markdown table: wall seconds of the whole command, the fp32 / int8 ONNX file sizes, and
the int8 ONNX model's scoring time per window through LoadedModel.scores (normalise,
infer, score; one thread): median of LATENCY_CALLS calls on 1 window, and on a batch of
64 windows divided by 64.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
LATENCY_CALLS = 200


def per_window_us(model_dir: Path, batch: int) -> float:
    from edge_agent.runtime.model import load_model

    m = load_model(model_dir)
    g = m.card.golden.inputs
    w = np.ascontiguousarray(np.resize(g, (batch, *g.shape[1:])), dtype=np.float32)
    m.scores(w)
    ts = []
    for _ in range(LATENCY_CALLS):
        t = time.perf_counter()
        m.scores(w)
        ts.append(time.perf_counter() - t)
    return 1e6 * float(np.median(ts)) / batch


def recording(path: Path, rows: int, channels: int) -> list[str]:
    rng = np.random.default_rng(0)
    t = np.arange(rows)
    names = [f"ch{i}" for i in range(channels)]
    cols = [
        10 + i + np.sin(2 * np.pi * t / (40 + 3 * i)) + 0.3 * rng.standard_normal(rows)
        for i in range(channels)
    ]
    table = np.column_stack([t, *cols])
    lines = [",".join(["t", *names])] + [",".join(f"{v:.4f}" for v in r) for r in table]
    path.write_text("\n".join(lines) + "\n")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rows", type=int, default=3000)
    a = ap.parse_args()
    print(
        "| family | channels | build s | fp32 ONNX bytes | int8 ONNX bytes "
        "| int8 us/window (1) | int8 us/window (batch 64) |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for c in a.channels:
            csv = Path(tmp) / f"c{c}.csv"
            names = recording(csv, a.rows, c)
            for fam in ("zscore", "pca", "ae"):
                out = Path(tmp) / f"{fam}-{c}"
                cmd = [sys.executable, "-m", "edge_agent", "model", "new", "--data", str(csv)]
                cmd += ["--columns", ",".join(names), "--timestamp-column", "t"]
                cmd += ["--family", fam, "--out", str(out), "--json"]
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
                dt = time.perf_counter() - t0
                if r.returncode:
                    raise SystemExit(r.stderr)
                name = json.loads(r.stdout)["variants"][0].rsplit("-", 2)[0]
                size = {
                    v: (out / f"{name}-{v}" / "model.onnx").stat().st_size
                    for v in ("fp32-onnx", "int8-onnx")
                }
                q8 = out / f"{name}-int8-onnx"
                print(
                    f"| {fam} | {c} | {dt:.1f} | {size['fp32-onnx']:,} | {size['int8-onnx']:,} "
                    f"| {per_window_us(q8, 1):.0f} | {per_window_us(q8, 64):.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
