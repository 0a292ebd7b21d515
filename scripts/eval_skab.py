#!/usr/bin/env python3
"""Detection quality on SKAB through the agent's own path, causally.

    /work/main/.venv/bin/python scripts/eval_skab.py --data ../shared/data/skab \
        [--models models] [--out docs/quality.md]

For each model variant and each of the 34 experiment files (valve1, valve2, other):
ReplaySource (the file as a replay CSV) -> StreamPipeline (Windower ->
LoadedModel.scores -> AlarmPolicy). The first CAL_ROWS rows are the on-site
calibration (edge_agent.calibration.fit_calibration, default parameters); the rest is
the test part. Row r is predicted anomalous iff the alarm was open after the newest
window ending at or before r (windows over the calibration rows give history: causal).
TP/FP/FN/TN are pooled over the test rows of all files (edge_agent.evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.calibration import apply_calibration, fit_calibration  # noqa: E402
from edge_agent.evaluation import Counts, confusion, pointwise_alarm  # noqa: E402
from edge_agent.pipeline.alarms import AlarmPolicy, Transition  # noqa: E402
from edge_agent.pipeline.stream import StreamPipeline  # noqa: E402
from edge_agent.runtime.model import LoadedModel, find_models, load_model  # noqa: E402
from edge_agent.sources.replay import Options, ReplaySource, load_table  # noqa: E402

CAL_ROWS = 400
GROUPS = ("valve1", "valve2", "other")
CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
FAMILIES = ("skab-ae", "skab-pca", "skab-zsq")
MAX_BATCH = 64
LATENCY_CALLS = 300
LEADERBOARD = [
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T-squared+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T-squared", 0.66, 19.21, 42.6),
    ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53),
    ("Vanilla AE", 0.39, 2.59, 75.15),
    ("Isolation forest", 0.29, 2.56, 82.89),
]


@dataclasses.dataclass
class Result:
    name: str
    counts: Counts = dataclasses.field(default_factory=Counts)
    windows: int = 0
    score_s: float = 0.0
    single_ms: float = 0.0
    files: int = 0


def files(data: Path) -> list[Path]:
    out = [p for g in GROUPS for p in sorted((data / g).glob("*.csv"), key=lambda p: int(p.stem))]
    if len(out) != 34:
        raise SystemExit(f"{data}: expected 34 experiment files, found {len(out)}")
    return out


def labels(path: Path) -> np.ndarray:
    o = Options(path=str(path), columns=("anomaly",), timestamp_column="datetime", delimiter=";")
    return load_table(path, o)[0][:, 0] > 0.5


def eval_file(model: LoadedModel, path: Path, res: Result) -> None:
    opts = Options(
        path=str(path),
        columns=CHANNELS,
        timestamp_column="datetime",
        delimiter=";",
        speed=0.0,
        block=64,
    )
    src = ReplaySource(path.stem, opts)
    src.open()
    blocks = []
    while not src.finished:
        b = src.read(1.0)
        if b is not None:
            blocks.append(b)
    samples = np.concatenate([b.samples for b in blocks])
    y = labels(path)
    assert len(y) == len(samples), path
    # On-site calibration on the first CAL_ROWS rows: the same code as `edge-agent calibrate`.
    cal = fit_calibration(model, samples[:CAL_ROWS], stream=path.stem, now=0.0)
    a = model.card.alarm
    policy = AlarmPolicy(cal.threshold, min_on=a.min_on, min_off=a.min_off, hysteresis=a.hysteresis)
    pre = model.card.preprocessing
    pipe = StreamPipeline(
        path.stem,
        apply_calibration(model, cal),
        policy,
        window=pre.window,
        hop=pre.hop,
        max_batch=MAX_BATCH,
    )
    transitions: list[tuple[int, bool]] = []
    t0 = time.perf_counter()
    for b in blocks:
        for ev in pipe.process(b):
            transitions.append(
                (ev.window_start + pre.window - 1, ev.transition is Transition.START)
            )
    res.score_s += time.perf_counter() - t0
    res.windows += pipe.stats.windows
    pred = pointwise_alarm(len(samples), transitions)
    res.counts = res.counts + confusion(pred[CAL_ROWS:], y[CAL_ROWS:])
    res.files += 1


def single_window_ms(model: LoadedModel) -> float:
    w = model.card.golden.inputs[:1]
    model.scores(w)
    ts = []
    for _ in range(LATENCY_CALLS):
        t = time.perf_counter()
        model.scores(w)
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def without_weights(model: LoadedModel) -> LoadedModel:
    """The same model scoring every channel equally (the Temperature ablation)."""
    return LoadedModel(dataclasses.replace(model.card, score_weights=None), model.backend)


def fmt(v: float, spec: str) -> str:
    return "n/a" if math.isnan(v) else format(v, spec)


def render(results: list[Result], command: str, ablation: list[Result]) -> str:
    lines = [
        "# Detection quality on SKAB (causal, through the agent's own pipeline)",
        "",
        "Generated by `scripts/eval_skab.py`; re-run with:",
        "",
        "```",
        command,
        "```",
        "",
        "## Protocol",
        "",
        "- Data: SKAB v0.9, the 34 experiment files (valve1 16, valve2 4, other 14); not in",
        "  this repository (GPL-3.0), passed with `--data`.",
        f"- Per file: the first {CAL_ROWS} rows are the on-site calibration "
        "(`edge_agent.calibration.fit_calibration`, the code behind `edge-agent calibrate`):",
        "  per-channel mean/std (std floored at 0.3 x the card's std) and the threshold",
        "  (highest calibration-window score x 1.5). The rest of the file is the test part.",
        "- Path: `ReplaySource` -> `StreamPipeline` (`Windower` -> `LoadedModel.scores` ->",
        "  `AlarmPolicy`), the card's alarm policy (min_on 3, min_off 20, hysteresis 0.8),",
        "  windows of 10 rows, hop 1. The prediction for row r is the alarm state after the",
        "  newest window ending at or before r: **causal**, no look-ahead. The test part's",
        "  first windows use rows of the calibration part as history.",
        "- TP/FP/FN/TN pooled over all test rows of all files; F1, FAR, MAR per the SKAB",
        "  definitions (`edge_agent/evaluation.py`).",
        "- No threshold or policy value was fitted on test labels; see *How the choices were",
        "  made* for what was chosen after looking at results.",
        "",
        "## Results",
        "",
        "| model | variant | F1 | FAR % | MAR % | TP | FP | FN | TN "
        "| ms/window (batched) | ms/window (single) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.counts
        fam, _, _var = r.name.partition("-fp32") if "-fp32" in r.name else r.name.partition("-int8")
        variant = r.name[len(fam) + 1 :]
        lines.append(
            f"| {fam} | {variant} | {fmt(c.f1, '.3f')} | {fmt(c.far, '.2f')} | "
            f"{fmt(c.mar, '.2f')} | {c.tp} | {c.fp} | {c.fn} | {c.tn} | "
            f"{1e3 * r.score_s / max(r.windows, 1):.4f} | {r.single_ms:.3f} |"
        )
    lines += [
        "",
        "ms/window (batched): wall time of `StreamPipeline.process` over all files divided by",
        f"windows scored (up to {MAX_BATCH} windows per inference call, as in a replay at full",
        "speed). ms/window (single): median of one `LoadedModel.scores` call on one window",
        f"({LATENCY_CALLS} calls), the latency of a live 1 Hz stream. One thread, "
        "this machine's CPU.",
        "",
        "## Published leaderboard (outlier detection, not causal)",
        "",
        "| algorithm | F1 | FAR % | MAR % |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {f:.2f} | {a:.2f} | {m:.2f} |" for n, f, a, m in LEADERBOARD]
    lines += [
        "",
        "The leaderboard's autoencoder entries label a row from windows reaching up to 59",
        "rows after it; ours decide at each row from data up to that row only.",
        "",
        "## Ablation: Temperature included in the score",
        "",
        "| model | variant | F1 | FAR % | MAR % |",
        "|---|---|---|---|---|",
    ]
    for r in ablation:
        c = r.counts
        lines.append(
            f"| {r.name} | all 8 channels weighted equally | {fmt(c.f1, '.3f')} | "
            f"{fmt(c.far, '.2f')} | {fmt(c.mar, '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--models", default=REPO / "models", type=Path)
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    ap.add_argument("--notes", type=Path, help="markdown appended to the report")
    ap.add_argument("--family", action="append", choices=FAMILIES, help="evaluate only this family")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fs = files(a.data)
    wanted = a.family or FAMILIES
    cards = [c for c in find_models(a.models) if c.family in wanted]
    cards.sort(key=lambda c: (FAMILIES.index(c.family), c.precision, c.backend))
    if not cards:
        raise SystemExit(
            f"{a.models}: no SKAB models (build them with scripts/build_skab_models.py)"
        )
    results, ablation = [], []
    for card in cards:
        model = load_model(card.directory)
        r = Result(card.name)
        for f in fs:
            eval_file(model, f, r)
        r.single_ms = single_window_ms(model)
        results.append(r)
        c = r.counts
        print(f"{card.name}: F1 {c.f1:.3f} FAR {c.far:.2f} MAR {c.mar:.2f} {c}", flush=True)
        if card.score_weights is not None and card.precision == "fp32":
            ab = Result(card.name)
            for f in fs:
                eval_file(without_weights(model), f, ab)
            ablation.append(ab)
            print(f"  all channels: F1 {ab.counts.f1:.3f} FAR {ab.counts.far:.2f}", flush=True)
    if a.out:
        cmd = (
            f"python scripts/eval_skab.py --data ../shared/data/skab --models models --out {a.out}"
        )
        if a.notes:
            cmd += f" --notes {a.notes}"
        text = render(results, cmd, ablation)
        if a.notes:
            text += "\n" + a.notes.read_text()
        a.out.write_text(text)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
