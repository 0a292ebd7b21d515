"""`edge-agent model new`: from a user's normal recordings to a model directory the
agent loads like the bundled ones.

Layout written under `out/`: one directory per variant, `<name>-fp32-onnx/`,
`<name>-int8-onnx/` and, where TensorFlow's converter is installed, `<name>-int8-tflite/`,
each with `model.json` (the card) and the model file; plus `report.json` and `REPORT.md`
(the quality report). A stream uses it with `model = "<out>"` (the profile picks the
variant) or `model = "<out>/<name>-int8-onnx"`.

Each variant's threshold = margin x the highest score it gives on the fit windows (the
same rule as on-site calibration); golden vectors are fit windows with the scores that
variant gives on its own runtime.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ConfigError
from edge_agent.fsutil import sha256_file
from edge_agent.modelbuild import onnxgraph
from edge_agent.modelbuild.families import AE_EPOCHS, FAMILIES, Fitted, fit_family
from edge_agent.modelbuild.quality import FileResult, fmt, run_file, summary
from edge_agent.modelbuild.userdata import Recording, rate_of, read_recording, split, windows
from edge_agent.runtime.card import AlarmDefaults, card_from_dict
from edge_agent.runtime.model import LoadedModel, load_model

__all__ = ["BuildResult", "BuildSpec", "build"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
ALARM = AlarmDefaults(min_on=3, min_off=10, hysteresis=0.8)
N_GOLDEN = 6
SEED = 7
STRETCH = 3.0  # int8 ranges also cover normal windows x this (large deviations)
EDGE_MIN = 10.0  # pinned int8 input range of the score-head families, in std units
AGREEMENT_SLACK = 1.25
GOLDEN_TOL = {"fp32": (1e-5, 1e-4), "int8": (1e-3, 1e-2)}


@dataclass(frozen=True)
class BuildSpec:
    data: tuple[Path, ...]
    columns: tuple[str, ...]
    out: Path
    family: str = "zscore"
    window: int = 10
    hop: int = 1
    timestamp_column: str = ""
    delimiter: str = "auto"
    decimal: str = "."
    name: str = ""
    units: tuple[str, ...] = ()
    holdout: float = 0.2
    margin: float = 1.5
    rate_hz: float = 1.0
    epochs: int = AE_EPOCHS
    version: int = 1
    anomalous: tuple[Path, ...] = ()
    label_column: str = ""
    force: bool = False

    def check(self) -> None:
        """ConfigError on settings that cannot build a model."""
        if self.family not in FAMILIES:
            raise ConfigError(f"--family {self.family!r}: expected one of {', '.join(FAMILIES)}")
        if not self.columns or any(not c for c in self.columns):
            raise ConfigError("--columns: give the channel names, comma-separated (e.g. temp)")
        if len(set(self.columns)) != len(self.columns):
            raise ConfigError(f"--columns: a channel is named twice: {self.columns}")
        if self.units and len(self.units) != len(self.columns):
            raise ConfigError(f"--units: {len(self.units)} given for {len(self.columns)} columns")
        if self.window < 1 or self.hop < 1:
            raise ConfigError("--window and --hop must be >= 1")
        if not 0 <= self.holdout < 0.9:
            raise ConfigError("--holdout: a fraction in [0, 0.9)")
        if not self.margin >= 1:
            raise ConfigError("--margin must be >= 1")
        if self.epochs < 1 or self.version < 0:
            raise ConfigError("--epochs must be >= 1 and --version >= 0")
        self._check_reading()
        name = self.model_name
        if name in ("", ".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise ConfigError(
                f"--name {name!r}: a model name becomes a folder name: no '/', no leading '.'"
            )
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out}: exists and is not a directory")
        if self.out.exists() and any(self.out.iterdir()) and not self.force:
            raise ConfigError(f"{self.out}: exists and is not empty (use --force to replace)")

    def _check_reading(self) -> None:
        """ConfigError on settings that cannot read the files as meant."""
        if not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ConfigError(f"--rate-hz {self.rate_hz:g}: expected a positive sample rate")
        if self.timestamp_column and self.timestamp_column in self.columns:
            raise ConfigError(
                f"--timestamp-column {self.timestamp_column!r} is also in --columns: "
                "a column is either the time or a channel"
            )
        if self.delimiter != "auto" and len(self.delimiter) != 1:
            raise ConfigError(
                f"--delimiter {self.delimiter!r}: one character (, ; or a tab), or leave it "
                "out to take it from the header"
            )
        if self.decimal not in (".", ","):
            raise ConfigError(f"--decimal {self.decimal!r}: expected . or ,")
        if self.decimal == "," and self.delimiter == ",":
            raise ConfigError("--decimal ,: the delimiter cannot be , too (e.g. --delimiter ';')")

    @property
    def model_name(self) -> str:
        return self.name or self.out.resolve().name


@dataclass
class BuildResult:
    out: Path
    variants: list[str]
    thresholds: dict[str, float]
    report: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _read_all(spec: BuildSpec, paths: tuple[Path, ...], labels: bool) -> list[Recording]:
    return [
        read_recording(
            p,
            spec.columns,
            timestamp_column=spec.timestamp_column,
            delimiter=spec.delimiter,
            decimal=spec.decimal,
            label_column=spec.label_column if labels else "",
        )
        for p in paths
    ]


def build(spec: BuildSpec) -> BuildResult:
    """Fit, export, quantise, calibrate, check and report (see module doc)."""
    spec.check()
    t0 = time.perf_counter()
    recs = _read_all(spec, spec.data, False)
    anomalous = _read_all(spec, spec.anomalous, True)
    rate = rate_of(recs, spec.rate_hz)
    data = split(recs, spec.columns, spec.holdout, spec.window, rate)
    z_fit = [((x - data.mean) / data.std).astype(np.float32) for x in data.fit]
    train = np.concatenate([windows(z, spec.window, spec.hop) for z in z_fit])
    if len(train) < 2:
        raise ConfigError(f"too few whole windows ({len(train)}) in the fit data")
    raw_fit = np.concatenate([windows(x, spec.window, spec.hop) for x in data.fit])
    fitted = fit_family(spec.family, train, epochs=spec.epochs)
    spec.out.mkdir(parents=True, exist_ok=True)
    name = spec.model_name
    for old in spec.out.glob(f"{name}-*"):
        if (old / "model.json").is_file():
            shutil.rmtree(old)
    tmp = spec.out / ".build-tmp"
    tmp.mkdir(exist_ok=True)
    rng = np.random.default_rng(SEED)
    golden = raw_fit[np.sort(rng.choice(len(raw_fit), min(N_GOLDEN, len(raw_fit)), replace=False))]
    base = _base_card(
        spec, mean=data.mean, std=data.std, rate=rate, fitted=fitted, recs=recs, n_train=len(train)
    )
    result = BuildResult(spec.out, [], {}, {}, notes=_skipped_rows(*recs, *anomalous))
    try:
        onnx = onnxgraph.require_onnx()
        f32 = tmp / "fp32.onnx"
        onnx.save(onnxgraph.dense_graph(fitted.stack, name=name), str(f32))
        models: dict[str, LoadedModel] = {}
        models["fp32-onnx"] = _write_variant(
            spec,
            base,
            precision="fp32",
            backend="onnx",
            blob=f32.read_bytes(),
            golden=golden,
            raw_fit=raw_fit,
        )
        rep = _int8_ranges(fitted, train, models["fp32-onnx"].card.threshold)
        q8 = tmp / "int8.onnx"
        exclude = (onnxgraph.SQUARE_NODE, onnxgraph.SUM_NODE)
        onnxgraph.quantize_int8(
            f32, q8, rep, exclude=exclude if fitted.stack.sum_squares_head else ()
        )
        models["int8-onnx"] = _write_variant(
            spec,
            base,
            precision="int8",
            backend="onnx",
            blob=q8.read_bytes(),
            golden=golden,
            raw_fit=raw_fit,
        )
        if onnxgraph.tflite_available():
            blob = onnxgraph.tflite_int8(fitted.stack, rep)
            models["int8-tflite"] = _write_variant(
                spec,
                base,
                precision="int8",
                backend="tflite",
                blob=blob,
                golden=golden,
                raw_fit=raw_fit,
            )
        else:
            result.notes.append(
                "int8 TFLite not built: TensorFlow's converter is not installed here "
                "(pip install tensorflow-cpu on a build machine; the ONNX variants need "
                "only onnxruntime)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = _report(spec, data.held_out, anomalous, models)
    _add_agreement(
        spec, models, held=data.held_out, anomalous=anomalous, train=train, report=report
    )
    (spec.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (spec.out / "REPORT.md").write_text(render_report(name, spec, report, result.notes))
    result.variants = [m.card.name for m in models.values()]
    result.thresholds = {v: m.card.threshold for v, m in models.items()}
    result.report = report
    result.seconds = time.perf_counter() - t0
    return result


def _skipped_rows(*recs: Recording) -> list[str]:
    """Notes on rows the reader skipped: said, not silently dropped (the user may have
    meant them)."""
    return [
        f"{r.path}: {r.bad_rows} row(s) skipped (a field that is not a number, or another "
        "number of fields than the header); windows do not span them"
        for r in recs
        if r.bad_rows
    ]


def _base_card(
    spec: BuildSpec,
    *,
    mean: F32,
    std: F32,
    rate: float,
    fitted: Fitted,
    recs: list[Recording],
    n_train: int,
) -> dict[str, Any]:
    w, c = spec.window, len(spec.columns)
    pre: dict[str, Any] = {
        "window": w,
        "hop": spec.hop,
        "channels": list(spec.columns),
        "rate_hz": rate,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "normalisation": "x_n = (x - mean) / std per channel outside the model; mean/std "
        "from the fit rows of the user's data; on-site calibration replaces them",
    }
    if spec.units:
        pre["units"] = list(spec.units)
    return {
        "preprocessing": pre,
        "alarm": {"min_on": ALARM.min_on, "min_off": ALARM.min_off, "hysteresis": ALARM.hysteresis},
        "score": fitted.score,
        "input": {"name": onnxgraph.IN_NAME, "shape": [None, w, c], "dtype": "float32"},
        "output": {
            "name": onnxgraph.OUT_NAME,
            "shape": list(fitted.stack.out_shape),
            "dtype": "float32",
        },
        "training": {
            "built_by": "edge-agent model new",
            "family": fitted.family,
            "data": [{"file": str(r.path), "rows": len(r.samples)} for r in recs],
            "holdout": f"the last {spec.holdout:g} of each file's rows, never fitted on",
            "windows": n_train,
            **fitted.info,
        },
        "metrics": "report.json beside this directory",
    }


def _write_variant(
    spec: BuildSpec,
    base: dict[str, Any],
    *,
    precision: str,
    backend: str,
    blob: bytes,
    golden: F32,
    raw_fit: F32,
) -> LoadedModel:
    name = f"{spec.model_name}-{precision}-{backend}"
    d = spec.out / name
    d.mkdir()
    fname = "model.onnx" if backend == "onnx" else "model.tflite"
    (d / fname).write_bytes(blob)
    card = json.loads(json.dumps(base))
    card.update(
        name=name,
        family=spec.model_name,
        version=spec.version,
        label=f"{spec.model_name} ({spec.family}, {len(spec.columns)} channels), "
        f"{precision}, {backend}",
        backend=backend,
        file=fname,
        sha256=sha256_file(d / fname),
        size_bytes=len(blob),
        precision=precision,
        golden={"inputs": golden.tolist(), "scores": [0.0] * len(golden)},
        threshold={"value": 1.0, "method": "placeholder"},
    )
    model = load_model(d, card=card_from_dict(card, d), validate=False)
    if backend == "tflite":
        q = model.backend.input_quant
        if q is not None:
            card["input"].update(dtype="int8", scale=q.scale, zero_point=q.zero_point)
        oq = model.backend.output_quant
        if oq is not None:
            card["output"].update(dtype="int8", scale=oq.scale, zero_point=oq.zero_point)
    fit_scores = _scores(model, raw_fit)
    top = float(fit_scores.max())
    thr = spec.margin * top if top > 0 else 1e-6
    card["threshold"] = {
        "value": thr,
        "method": f"{spec.margin:g} x the highest score of this variant on the "
        f"{len(raw_fit)} fit windows (the held-out tail was not used); on another "
        "machine or operating point run `edge-agent calibrate`",
    }
    atol, rtol = GOLDEN_TOL[precision]
    card["golden"] = {
        "inputs": golden.tolist(),
        "scores": [float(s) for s in model.scores(golden)],
        "atol": atol,
        "rtol": rtol,
        "source": "raw fit windows; scores from this variant on its own runtime",
    }
    (d / "model.json").write_text(json.dumps(card, indent=1) + "\n")
    return load_model(d)  # the hash, the runtime and the golden vectors, as a device does


def _scores(model: LoadedModel, raw: F32) -> npt.NDArray[np.float64]:
    if not len(raw):
        return np.empty(0)
    return np.concatenate([model.scores(raw[i : i + 512]) for i in range(0, len(raw), 512)])


def _int8_ranges(fitted: Fitted, train: F32, threshold: float) -> F32:
    """Calibration windows for the int8 ranges. Score-head families: the input range is
    pinned to +-R std units (R >= EDGE_MIN, and R^2 >= 4 x the fp32 threshold, so one
    saturated channel alone still alarms); the autoencoder: normal windows and the same
    stretched, so large deviations are not all clipped to the normal range."""
    if not fitted.stack.sum_squares_head:
        return np.concatenate([train, STRETCH * train[::3]]).astype(np.float32)
    r = max(EDGE_MIN, 2.0 * float(np.sqrt(threshold)))
    _, w, c = train.shape
    alt = np.where(np.arange(c) % 2 == 0, r, -r).astype(np.float32)
    edge = np.stack(
        [np.full((w, c), r), np.full((w, c), -r), np.tile(alt, (w, 1)), np.tile(-alt, (w, 1))]
    ).astype(np.float32)
    return np.concatenate([edge, np.clip(train, -r, r)]).astype(np.float32)


def _run_all(
    model: LoadedModel, spec: BuildSpec, held: tuple[F32, ...], anomalous: list[Recording]
) -> tuple[list[FileResult], list[FileResult]]:
    kw: dict[str, Any] = {
        "score": model.scores,
        "threshold": model.card.threshold,
        "alarm": model.card.alarm,
        "window": spec.window,
        "hop": spec.hop,
    }
    normal = [run_file(str(p), x, **kw) for p, x in zip(spec.data, held, strict=True) if len(x)]
    anom = [run_file(str(r.path), r.samples, labels=r.labels, **kw) for r in anomalous]
    return normal, anom


def _report(
    spec: BuildSpec,
    held: tuple[F32, ...],
    anomalous: list[Recording],
    models: dict[str, LoadedModel],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.model_name,
        "family": spec.family,
        "channels": list(spec.columns),
        "window": spec.window,
        "hop": spec.hop,
        "variants": {},
    }
    for v, m in models.items():
        normal, anom = _run_all(m, spec, held, anomalous)
        out["variants"][v] = {"threshold": m.card.threshold, **summary(normal, anom)}
    return out


def _add_agreement(
    spec: BuildSpec,
    models: dict[str, LoadedModel],
    *,
    held: tuple[F32, ...],
    anomalous: list[Recording],
    train: F32,
    report: dict[str, Any],
) -> None:
    """Each int8 variant vs fp32: score bound (into its card, for `bench --select`) and
    the share of windows where the alarm decision (score >= threshold) is the same."""
    raw = [windows(x, spec.window, spec.hop) for x in held]
    raw += [windows(r.samples, spec.window, spec.hop) for r in anomalous]
    ref_model = models["fp32-onnx"]
    mean, std = ref_model.card.preprocessing.mean, ref_model.card.preprocessing.std
    stretched = (STRETCH * train[::4]) * std + mean  # large deviations, in raw units
    decide = np.concatenate([*raw, np.empty((0, spec.window, len(spec.columns)), np.float32)])
    allw = np.concatenate([decide, stretched.astype(np.float32)])
    ref = _scores(ref_model, allw)
    n_dec = len(decide)
    for v, m in models.items():
        if v == "fp32-onnx":
            continue
        got = _scores(m, allw)
        diff = np.abs(got - ref)
        normal_diff = diff[:n_dec] if n_dec else diff
        atol = float(f"{AGREEMENT_SLACK * max(float(normal_diff.max()), 1e-9):.2g}")
        rel = np.maximum(diff - atol, 0) / np.maximum(np.abs(ref), 1e-12)
        rtol = float(f"{AGREEMENT_SLACK * float(rel.max()):.2g}")
        same = (got[:n_dec] >= m.card.threshold) == (ref[:n_dec] >= ref_model.card.threshold)
        agreement = {
            "windows": f"{n_dec} held-out and anomalous-file windows, and {len(stretched)} "
            f"fit windows x{STRETCH:g} (large deviations)",
            "versus": f"{ref_model.card.name} on onnxruntime",
            "max_abs_diff": float(diff.max()),
            "bound": {"atol": atol, "rtol": rtol},
            "bound_rule": "|score - fp32_score| <= atol + rtol * fp32_score",
            "decision_agreement": float(same.mean()) if n_dec else None,
        }
        path = m.card.directory / "model.json"
        card = json.loads(path.read_text())
        card["agreement"] = agreement
        path.write_text(json.dumps(card, indent=1) + "\n")
        report["variants"][v]["agreement_with_fp32"] = {
            "decision_agreement": agreement["decision_agreement"],
            "windows": n_dec,
            "max_abs_score_diff": agreement["max_abs_diff"],
        }


def render_report(name: str, spec: BuildSpec, report: dict[str, Any], notes: list[str]) -> str:
    """REPORT.md: what was built and how it did on data it was not fitted on."""
    lines = [
        f"# {name}: {spec.family} model on {len(spec.columns)} channel(s)",
        "",
        f"Channels: {', '.join(spec.columns)}. Window {spec.window}, hop {spec.hop}.",
        f"Data: {', '.join(str(p) for p in spec.data)}; the last {spec.holdout:g} of each "
        "file is held out (quality below), the rest is fitted on.",
        "",
        "| variant | threshold | held-out normal: windows | false alarms | FAR % "
        "| int8 decisions = fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for v, r in report["variants"].items():
        h = r["held_out_normal"]
        agr = r.get("agreement_with_fp32", {}).get("decision_agreement")
        far = "-" if h["far_percent"] is None else f"{h['far_percent']:.2f}"
        lines.append(
            f"| {v} | {r['threshold']:.4g} | {h['windows']} | {h['false_alarms']} | {far} "
            f"| {'-' if agr is None else f'{100 * agr:.2f} %'} |"
        )
    for v, r in report["variants"].items():
        a = r.get("anomalous")
        if not a:
            continue
        lines += [
            "",
            f"Anomalous files, {v}: alarms raised in {a['files_with_alarm']} of "
            f"{len(a['files'])} files.",
        ]
        lr = a.get("labelled_rows")
        if lr:
            lines.append(
                f"Labelled rows: F1 {fmt(lr['f1'], '.3f')}, "
                f"FAR {fmt(lr['far_percent'], '.2f')} %, MAR {fmt(lr['mar_percent'], '.2f')} % "
                f"(TP {lr['tp']}, FP {lr['fp']}, FN {lr['fn']}, TN {lr['tn']})."
            )
    if notes:
        lines += ["", *[f"Note: {n}" for n in notes]]
    return "\n".join(lines) + "\n"
