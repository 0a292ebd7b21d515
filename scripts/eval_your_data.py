#!/usr/bin/env python3
"""SKAB through `edge-agent model new`: models built by the command from each file's
first 400 rows (the published protocol), run causally through the agent's replay path.

    .venv/bin/python scripts/eval_your_data.py --data ../shared/data/skab \
        [--family zscore --family pca --family ae] [--single-channel] [--out FILE.md]
        [--protocol per-file|onsite|both]

Protocol `per-file` (default). Per file and family: the first CAL_ROWS rows (header
kept) are written to a temporary CSV and `edge-agent model new --holdout 0` fits on
all of them (the command's own threshold rule: margin x the highest fit-window score);
then ReplaySource (the whole file, as fast as it goes) -> StreamPipeline (Windower ->
LoadedModel.scores -> AlarmPolicy with the card's threshold and alarm defaults), for
the fp32 and the int8 ONNX variant. Row r is predicted anomalous iff the alarm was open
after the newest window ending at or before r. TP/FP/FN/TN are pooled over the test
rows (row >= CAL_ROWS) of all 34 files. No on-site calibration: the model was built on
this very stretch.

Protocol `onsite` (skab-zsq's protocol, every part the product's own): per family, one
`edge-agent model new` (default options) on SKAB's anomaly-free recording, all 8
channels; then per file the on-site calibration of `edge-agent calibrate`
(`fit_calibration`, default parameters: mean/std of the first CAL_ROWS rows with std
floored at 0.3 x the card's std, threshold = 1.5 x the highest calibration-window
score), and the same replay path with the calibrated normalisation and threshold.
No channel is chosen and nothing is fitted on test rows or labels.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from eval_skab import files, labels  # noqa: E402
from skab_data import CAL_ROWS, CHANNELS  # noqa: E402

from edge_agent.cli import main as cli  # noqa: E402
from edge_agent.measure.evaluation import Counts, confusion, pointwise_alarm  # noqa: E402
from edge_agent.pipeline.alarms import AlarmPolicy, Transition  # noqa: E402
from edge_agent.pipeline.baseline_config import BaselineConfig  # noqa: E402
from edge_agent.pipeline.baseline_follower import BaselineFollower  # noqa: E402
from edge_agent.pipeline.calibration import apply_calibration, fit_calibration  # noqa: E402
from edge_agent.pipeline.stream import StreamPipeline  # noqa: E402
from edge_agent.runtime.model import LoadedModel, load_model  # noqa: E402
from edge_agent.sources.base import Block  # noqa: E402
from edge_agent.sources.replay import Options, ReplaySource  # noqa: E402

FAMILIES = ("zscore", "pca", "ae")
NORMAL = Path("anomaly-free") / "anomaly-free.csv"  # SKAB's normal-only recording
VARIANTS = ("fp32-onnx", "int8-onnx")
NO_TEMPERATURE = tuple(c for c in CHANNELS if c != "Temperature")
# Thermocouple too: chosen AFTER seeing that its slow drift causes most false alarms on
# the test parts (model selection on test data; docs/quality.md says so)
NO_DRIFTERS = tuple(c for c in NO_TEMPERATURE if c != "Thermocouple")


@dataclass
class Tally:
    counts: dict[str, Counts] = field(default_factory=lambda: {v: Counts() for v in VARIANTS})
    agree: int = 0
    windows: int = 0
    build_s: float = 0.0


def blocks_of(path: Path, columns: tuple[str, ...]) -> list[Block]:
    opts = Options(
        path=str(path), columns=columns, timestamp_column="datetime", delimiter=";", speed=0.0
    )
    src = ReplaySource(path.stem, opts)
    src.open()
    out = []
    while not src.finished:
        b = src.read(1.0)
        if b is not None:
            out.append(b)
    return out


EXTRA: list[str] = []  # further `model new` options (--extra)
ADAPTIVE: list[BaselineConfig] = []  # --adaptive: the stream's baseline follows


def build(path: Path, columns: tuple[str, ...], family: str, out: Path) -> float:
    """`edge-agent model new` on the file's first CAL_ROWS rows; seconds taken."""
    head = path.read_text().splitlines()[: CAL_ROWS + 1]
    fit = out.parent / f"{out.name}-fit.csv"
    fit.write_text("\n".join(head) + "\n")
    args = ["model", "new", "--data", str(fit), "--columns", ",".join(columns)]
    args += ["--timestamp-column", "datetime", "--family", family, "--holdout", "0"]
    args += ["--out", str(out), "--force", *EXTRA]
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli(args)
    if rc != 0:
        raise SystemExit(f"model new failed on {path} ({family}, {columns})")
    return time.perf_counter() - t


def build_normal(data: Path, columns: tuple[str, ...], family: str, out: Path) -> float:
    """`edge-agent model new` (default options) on SKAB's anomaly-free recording."""
    args = ["model", "new", "--data", str(data / NORMAL), "--columns", ",".join(columns)]
    args += ["--timestamp-column", "datetime", "--family", family]
    args += ["--out", str(out), "--force", *EXTRA]
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli(args)
    if rc != 0:
        raise SystemExit(f"model new failed on {NORMAL} ({family}, {columns})")
    return time.perf_counter() - t


def calibrated(model: LoadedModel, blocks: list[Block], name: str) -> tuple[LoadedModel, float]:
    """The model after the on-site calibration (`edge-agent calibrate`'s code) on the
    file's first CAL_ROWS rows, and the calibrated threshold."""
    samples = np.concatenate([b.samples for b in blocks])[:CAL_ROWS]
    cal = fit_calibration(model, samples, stream=name, now=0.0)
    return apply_calibration(model, cal), cal.threshold


def transitions(
    model: LoadedModel, blocks: list[Block], threshold: float | None = None
) -> list[tuple[int, bool]]:
    pre, a = model.card.preprocessing, model.card.alarm
    policy = AlarmPolicy(
        model.card.threshold if threshold is None else threshold,
        min_on=a.min_on,
        min_off=a.min_off,
        hysteresis=a.hysteresis,
    )
    pipe = StreamPipeline("eval", model, policy, window=pre.window, hop=pre.hop, max_batch=64)
    follower = None
    if ADAPTIVE:
        with tempfile.TemporaryDirectory() as state:
            follower = BaselineFollower(Path(state), "eval", ADAPTIVE[0], pipe)
            return _run(pipe, blocks, pre.window, follower)
    return _run(pipe, blocks, pre.window, follower)


def _run(
    pipe: StreamPipeline, blocks: list[Block], window: int, follower: BaselineFollower | None
) -> list[tuple[int, bool]]:
    out = []
    for b in blocks:
        for ev in pipe.process(b):
            out.append((ev.window_start + window - 1, ev.transition is Transition.START))
        if follower is not None:
            follower.after_block(b)
    return out


def evaluate(
    data: Path, family: str, columns: tuple[str, ...], work: Path, onsite: bool = False
) -> Tally:
    """Per-file models (default), or one model from anomaly-free data calibrated on
    each file's first CAL_ROWS rows (`onsite`)."""
    t = Tally()
    if onsite:
        out = work / f"{family}-normal-{len(columns)}"
        t.build_s = 34 * build_normal(data, columns, family, out)  # row() divides by 34
        built = {v: load_model(out / f"{out.name}-{v}") for v in VARIANTS}
    for path in files(data):
        if not onsite:
            out = work / f"{family}-{path.parent.name}-{path.stem}"
            t.build_s += build(path, columns, family, out)
        blocks = blocks_of(path, columns)
        y = labels(path)
        n = sum(len(b.samples) for b in blocks)
        scores, thr = {}, {}
        for v in VARIANTS:
            threshold = None
            if onsite:
                model, threshold = calibrated(built[v], blocks, path.stem)
            else:
                model = load_model(out / f"{out.name}-{v}")
            trans = transitions(model, blocks, threshold)
            pred = pointwise_alarm(n, trans)
            t.counts[v] = t.counts[v] + confusion(pred[CAL_ROWS:], y[CAL_ROWS:])
            w = np.lib.stride_tricks.sliding_window_view(
                np.concatenate([b.samples for b in blocks]), model.card.preprocessing.window, 0
            ).transpose(0, 2, 1)
            scores[v] = model.scores(np.ascontiguousarray(w, dtype=np.float32))
            thr[v] = model.card.threshold if threshold is None else threshold
        same = (scores["fp32-onnx"] >= thr["fp32-onnx"]) == (
            scores["int8-onnx"] >= thr["int8-onnx"]
        )
        t.agree += int(same.sum())
        t.windows += len(same)
    return t


def row(label: str, t: Tally) -> str:
    f, q = t.counts["fp32-onnx"], t.counts["int8-onnx"]
    return (
        f"| {label} | {q.f1:.3f} | {q.far:.2f} | {q.mar:.2f} | {f.f1:.3f} | {f.far:.2f} "
        f"| {100 * t.agree / max(t.windows, 1):.2f} | {t.build_s / 34:.2f} |"
    )


HEADER = (
    "| model (built per file by `model new`) | int8 F1 | int8 FAR % | int8 MAR % | fp32 F1 "
    "| fp32 FAR % | int8 = fp32 decisions % | build s/file |\n|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--family", action="append", choices=FAMILIES)
    ap.add_argument("--single-channel", action="store_true", help="also 1-channel models")
    ap.add_argument("--out", type=Path, help="write the tables (markdown) here")
    ap.add_argument("--extra", default="", help="more `model new` options, e.g. '--margin 2'")
    ap.add_argument(
        "--adaptive",
        metavar="FOLLOW_S,SETTLE_S",
        help="run the streams with an adaptive baseline ([streams.baseline])",
    )
    ap.add_argument(
        "--protocol",
        choices=("per-file", "onsite", "both"),
        default="per-file",
        help="per-file: `model new` on each file's first 400 rows; onsite: `model new` once "
        "on anomaly-free.csv, then on-site calibration on each file's first 400 rows",
    )
    a = ap.parse_args()
    EXTRA[:] = a.extra.split()
    if a.adaptive:
        follow_s, settle_s = (float(v) for v in a.adaptive.split(","))
        ADAPTIVE[:] = [BaselineConfig("adaptive", follow_s, settle_s)]
    fams = a.family or list(FAMILIES)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.protocol in ("onsite", "both"):
            lines += [
                "### Built once from anomaly-free.csv, calibrated on site per file",
                "",
                HEADER.replace("built per file by `model new`", "`model new` + calibrate").replace(
                    "build s/file", "build s (once)"
                ),
            ]
            for fam in fams:
                for label, cols in (
                    ("8 channels", CHANNELS),
                    # skab-zsq's channel set, for comparison only (chosen on test results)
                    ("7, no Temperature (skab-zsq's set)", NO_TEMPERATURE),
                ):
                    t = evaluate(a.data, fam, cols, Path(tmp), onsite=True)
                    lines.append(row(f"{fam}, {label}, on-site calibration", t))
                    print(lines[-1], flush=True)
            lines.append("")
        if a.protocol in ("per-file", "both"):
            lines += [
                "### Built per file from its first 400 rows: all 8 channels; 7 without "
                "Temperature; 6 without Temperature and Thermocouple",
                "",
                HEADER,
            ]
            for fam in fams:
                for label, cols in (
                    ("8 channels", CHANNELS),
                    ("7, no Temperature", NO_TEMPERATURE),
                    ("6, no Temperature/Thermocouple", NO_DRIFTERS),
                ):
                    t = evaluate(a.data, fam, cols, Path(tmp))
                    lines.append(row(f"{fam}, {label}", t))
                    print(lines[-1], flush=True)
        if a.single_channel:
            lines += ["", "### One channel at a time (1-channel models)", "", HEADER]
            for fam in fams:
                for ch in CHANNELS:
                    t = evaluate(a.data, fam, (ch,), Path(tmp))
                    lines.append(row(f"{fam}, {ch}", t))
                    print(lines[-1], flush=True)
    cmd = "scripts/eval_your_data.py --data ../shared/data/skab " + " ".join(
        [
            *(f"--family {f}" for f in (a.family or [])),
            *([f"--protocol {a.protocol}"] if a.protocol != "per-file" else []),
            *(["--single-channel"] * a.single_channel),
            *([f"--extra '{a.extra}'"] if a.extra else []),
            *([f"--adaptive {a.adaptive}"] if a.adaptive else []),
        ]
    )
    text = "\n".join([f"Command: `{cmd.strip()}`", "", *lines]) + "\n"
    if a.out:
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
