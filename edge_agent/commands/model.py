"""`edge-agent model new`: build a model from your own normal data (CSV or .npy).

Fits a family (zscore, pca, ae) to the named columns, writes fp32 and int8 ONNX (and
int8 TFLite where TensorFlow's converter is installed) with model cards, and reports
false alarms on a held-out tail (edge_agent/modelbuild/). Needs the `onnx` package
(`pip install onnx`, the `model` extra); the agent itself does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError

__all__ = ["register"]

FAMILY_HELP = (
    "zscore: per-channel z-score of the window mean (no training; robust default); "
    "pca: PCA with T-squared and Q on the window mean (correlated channels); "
    "ae: dense autoencoder on the whole window (shapes over time)"
)


def _names(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",")) if text else ()


def register(sub: Any) -> None:
    p = sub.add_parser("model", help="build a model from your own data")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    n = msub.add_parser(
        "new",
        help="fit a model to normal data from your sensors and write a model directory",
        description="Fit a model family to recordings of normal operation and write a "
        "model directory (fp32 + int8 ONNX, int8 TFLite where a converter is installed, "
        'model cards, REPORT.md) that a stream uses with model = "OUT".',
    )
    n.add_argument(
        "--data",
        nargs="+",
        required=True,
        type=Path,
        metavar="FILE",
        help="CSV (header row) or .npy files of normal operation",
    )
    n.add_argument("--columns", required=True, help="channel columns, comma-separated")
    n.add_argument("--timestamp-column", default="", help="time column (seconds or ISO 8601)")
    n.add_argument("--delimiter", default="auto", help="CSV delimiter (default: from the header)")
    n.add_argument(
        "--decimal",
        default=".",
        help="decimal mark of the values: . (default) or , for 3,14 (with ; or tab delimiters)",
    )
    n.add_argument("--family", default="zscore", choices=("zscore", "pca", "ae"), help=FAMILY_HELP)
    n.add_argument("--window", type=int, default=10, help="samples per window (default 10)")
    n.add_argument("--hop", type=int, default=1, help="samples between windows (default 1)")
    n.add_argument("--out", required=True, type=Path, help="output directory")
    n.add_argument("--name", default="", help="model family name (default: OUT's name)")
    n.add_argument("--units", default="", help="units per column, comma-separated (card only)")
    n.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of each file's tail kept out of fitting (default 0.2)",
    )
    n.add_argument(
        "--margin",
        type=float,
        default=1.5,
        help="threshold = margin x highest fit-window score (default 1.5)",
    )
    n.add_argument(
        "--rate-hz",
        type=float,
        default=1.0,
        help="sample rate when there is no timestamp column (default 1)",
    )
    n.add_argument("--epochs", type=int, default=60, help="ae only: training epochs")
    n.add_argument("--version", type=int, default=1, help="model version (integer)")
    n.add_argument(
        "--anomalous",
        nargs="+",
        default=[],
        type=Path,
        metavar="FILE",
        help="files with anomalies: detection figures in the report",
    )
    n.add_argument(
        "--label-column", default="", help="0/1 column of the --anomalous files: row-wise F1/FAR"
    )
    n.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    n.add_argument("--json", action="store_true", help="print the result as JSON")
    n.set_defaults(func=_new)


def _new(args: argparse.Namespace) -> int:
    from edge_agent.modelbuild.build import BuildSpec, build
    from edge_agent.modelbuild.quality import fmt

    spec = BuildSpec(
        data=tuple(args.data),
        columns=_names(args.columns),
        out=args.out,
        family=args.family,
        window=args.window,
        hop=args.hop,
        timestamp_column=args.timestamp_column,
        delimiter=args.delimiter,
        decimal=args.decimal,
        name=args.name,
        units=_names(args.units),
        holdout=args.holdout,
        margin=args.margin,
        rate_hz=args.rate_hz,
        epochs=args.epochs,
        version=args.version,
        anomalous=tuple(args.anomalous),
        label_column=args.label_column,
        force=args.force,
    )
    try:
        res = build(spec)
    except OSError as e:  # inputs are read (and refused) as ConfigError: this is --out
        raise ConfigError(
            f"--out {spec.out}: cannot write the model ({e.filename or spec.out}: "
            f"{e.strerror or e}): choose a writable folder"
        ) from e
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(res.out),
                    "variants": res.variants,
                    "notes": res.notes,
                    "seconds": res.seconds,
                    "report": res.report,
                },
                indent=1,
            )
        )
        return 0
    print(
        f"built {spec.model_name} ({spec.family}, channels {', '.join(spec.columns)}, "
        f"window {spec.window}, hop {spec.hop}) in {res.seconds:.1f} s -> {res.out}"
    )
    for v, r in res.report["variants"].items():
        h = r["held_out_normal"]
        far = "n/a" if h["far_percent"] is None else f"{h['far_percent']:.2f} %"
        line = (
            f"  {spec.model_name}-{v}: threshold {r['threshold']:.4g}; held-out normal: "
            f"{h['windows']} windows, {h['false_alarms']} false alarms, FAR {far}"
        )
        agr = r.get("agreement_with_fp32", {}).get("decision_agreement")
        if agr is not None:
            line += f"; decisions = fp32 on {100 * agr:.2f} % of windows"
        print(line)
        a = r.get("anomalous")
        if a:
            print(f"    anomalous files: alarms in {a['files_with_alarm']} of {len(a['files'])}")
            lr = a.get("labelled_rows")
            if lr:
                print(
                    f"    labelled rows: F1 {fmt(lr['f1'], '.3f')}, "
                    f"FAR {fmt(lr['far_percent'], '.2f')} %, "
                    f"MAR {fmt(lr['mar_percent'], '.2f')} %"
                )
    for note in res.notes:
        print(f"note: {note}")
    print(f'report: {res.out / "REPORT.md"}; use it with model = "{res.out}" in a stream')
    return 0
