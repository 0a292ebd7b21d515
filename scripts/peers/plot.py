"""PNG plots from bench_peers.py's JSON (and `edge-agent bench --json` for int8 vs fp32).

    .bench-venvs/plot/bin/python scripts/peers/plot.py PEERS.json OUTDIR [CORE.json]

Runs in the throw-away plot venv (matplotlib is no project dependency).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    peers = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    rows = {k: v for k, v in peers["peers"].items() if v.get("available")}
    rows["naive script"] = peers["naive"]
    rows["agent in-process"] = peers["agent_inprocess"]

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in rows.items():
        bs = sorted(v["windows_per_s"], key=int)
        us = [1e6 / v["windows_per_s"][b] for b in bs]
        ax.plot([int(b) for b in bs], us, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (windows per call)")
    ax.set_ylabel("time per window at saturation (us, log)")
    ax.set_title("Time per window vs batch size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_vs_batch.png", dpi=110)

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(rows)
    best = [max(rows[n]["windows_per_s"].values()) for n in names]
    names.append("agent pipeline")
    best.append(peers["agent_inprocess"]["pipeline_windows_per_s"])
    ax.barh(names, best)
    ax.set_xscale("log")
    ax.set_xlabel("windows/s at saturation, best batch size (log)")
    ax.set_title("Throughput vs peers (same ONNX model)")
    for i, v in enumerate(best):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_peers.png", dpi=110)

    if len(sys.argv) > 3:
        core = json.loads(Path(sys.argv[3]).read_text())
        res = core["results"]
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [r["variant"] for r in res]
        xs = range(len(res))
        w = 0.27
        for k, (key, lab) in enumerate(
            [
                ("raw_batch1_us", "raw batch 1"),
                ("raw_batched_us", "raw batched"),
                ("pipeline_us", "pipeline"),
            ]
        ):
            ax.bar([x + (k - 1) * w for x in xs], [r[key]["median"] for r in res], w, label=lab)
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel("us per window (median)")
        ax.set_title("int8 vs fp32 per variant")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "int8_vs_fp32.png", dpi=110)


if __name__ == "__main__":
    main()
