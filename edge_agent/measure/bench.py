"""`edge-agent bench`: core speed figures measured side by side in one run.

For each installed model variant of a family: raw backend time per window at batch 1
and batched, and the full pipeline's time per window on the same windows (windowing,
normalisation, inference, scoring, alarm policy), with the overhead = pipeline minus
time inside the runtime, and the pipeline's saturation throughput: windows/s (wall,
one pipeline thread) and windows per CPU-second (per core, all runtime threads
counted). Each figure is the median over repeats, with min and max.

`select_variant` adds the on-device accuracy check for `--select`: every variant
scores the same windows as the fp32 reference and is judged by its card's agreement
bound (edge_agent/runtime/selection.py).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import ModelError
from edge_agent.measure.benchdata import bench_samples, bench_windows
from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.pipeline.windows import samples_needed
from edge_agent.profiles import Profile
from edge_agent.runtime.card import ModelCard
from edge_agent.runtime.model import LoadedModel, find_models, load_model
from edge_agent.runtime.registry import runtime_available
from edge_agent.runtime.selection import (
    Candidate,
    Choice,
    agreement_ratio,
    bound_from_card,
    choose_variant,
)
from edge_agent.sources.base import Block

log = logging.getLogger(__name__)

__all__ = [
    "AGREEMENT_FRAMES",
    "AGREEMENT_SECONDS",
    "AGREEMENT_SEED",
    "Figure",
    "VariantResult",
    "bench_family",
    "select_variant",
]

# The windows the cards' agreement figures were measured on: demo seed 9, 300 s
# (image models: 600 frames of the synthetic inspection view, seed 9).
AGREEMENT_SEED = 9
AGREEMENT_SECONDS = 300.0
AGREEMENT_FRAMES = 600


@dataclass(frozen=True)
class Figure:
    median: float
    min: float
    max: float

    @staticmethod
    def of(xs: list[float]) -> Figure:
        return Figure(statistics.median(xs), min(xs), max(xs))


@dataclass(frozen=True)
class VariantResult:
    model: str
    backend: str
    precision: str
    windows: int
    raw_batch1_us: Figure
    raw_batched_us: Figure
    pipeline_us: Figure
    overhead_us: Figure
    batch: int
    windows_per_s: Figure  # pipeline at saturation, one thread, wall clock
    windows_per_cpu_s: Figure  # the same per CPU-second: per core

    @property
    def variant(self) -> str:
        return f"{self.precision}-{self.backend}"

    @property
    def pipeline_vs_raw_batched(self) -> float:
        """Pipeline throughput as a fraction of the raw backend's batched throughput."""
        return self.raw_batched_us.median / self.pipeline_us.median


def _time_raw(model: LoadedModel, x: np.ndarray, batch: int) -> float:
    x_norm = model.normalize(x)
    t0 = time.perf_counter()
    for i in range(0, len(x_norm), batch):
        model.backend.infer(x_norm[i : i + batch])
    return (time.perf_counter() - t0) / len(x_norm) * 1e6


@dataclass(frozen=True)
class _PipelineRun:
    us_per_window: float
    overhead_us: float
    windows: int
    windows_per_s: float
    windows_per_cpu_s: float


def _time_pipeline(model: LoadedModel, samples: np.ndarray, block: int, batch: int) -> _PipelineRun:
    pre = model.card.preprocessing
    pipe = StreamPipeline(
        "bench",
        model,
        AlarmPolicy(model.card.threshold),
        window=pre.window,
        hop=pre.hop,
        max_batch=batch,
    )
    be = model.backend
    be.total_s = 0.0
    c0 = time.process_time()  # all threads of the process: the runtime's too
    t0 = time.perf_counter()
    for s in range(0, len(samples), block):
        pipe.process(Block(samples[s : s + block], 0.0, s, pre.rate_hz or 1.0))
    total = time.perf_counter() - t0
    cpu = time.process_time() - c0
    n = pipe.stats.windows
    return _PipelineRun(
        total / n * 1e6, (total - be.total_s) / n * 1e6, n, n / total, n / max(cpu, 1e-9)
    )


def bench_family(
    models_dir: Path,
    family: str,
    profile: Profile,
    *,
    windows: int = 2048,
    batch: int = 16,
    repeats: int = 5,
) -> list[VariantResult]:
    results = []
    for card in find_models(models_dir):
        if card.family != family or not runtime_available(card.backend):
            continue
        model = load_model(card.directory, profile)
        pre = model.card.preprocessing
        n_samples = samples_needed(pre.window, pre.hop, windows)
        samples = bench_samples(card, n_samples, seed=1)
        # Windows exactly as the pipeline will cut them, for the raw figures.
        x = bench_windows(card, samples)
        block = pre.hop * batch  # one block = one full batch of new windows
        r1, rb, pl, ov, wps, wpc = [], [], [], [], [], []
        n = 0
        for _ in range(repeats):
            r1.append(_time_raw(model, x, 1))
            rb.append(_time_raw(model, x, batch))
            run = _time_pipeline(model, samples, block, batch)
            n = run.windows
            pl.append(run.us_per_window)
            ov.append(run.overhead_us)
            wps.append(run.windows_per_s)
            wpc.append(run.windows_per_cpu_s)
        results.append(
            VariantResult(
                card.name,
                card.backend,
                card.precision,
                n,
                Figure.of(r1),
                Figure.of(rb),
                Figure.of(pl),
                Figure.of(ov),
                batch,
                Figure.of(wps),
                Figure.of(wpc),
            )
        )
    return results


def as_json(results: list[VariantResult]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        d = asdict(r)
        d["variant"] = r.variant
        d["pipeline_vs_raw_batched"] = r.pipeline_vs_raw_batched
        out.append(d)
    return out


def _reference(cards: list[ModelCard]) -> ModelCard | None:
    """The model the agreement bounds are stated against: the card's `agreement.versus`
    when it is in the family, else the fp32 ONNX (or any fp32) variant."""
    names = {c.name: c for c in cards}
    for c in cards:
        agr = c.raw.get("agreement")
        versus = agr.get("versus", "") if isinstance(agr, dict) else ""
        ref = names.get(str(versus).split(" ")[0]) if versus else None
        if ref is not None:
            return ref
    fp32 = [c for c in cards if c.precision == "fp32"]
    fp32.sort(key=lambda c: c.backend != "onnx")
    return fp32[0] if fp32 else None


def select_variant(
    models_dir: Path, family: str, profile: Profile, results: list[VariantResult]
) -> Choice:
    """Judge each benched variant against the fp32 reference on this device and pick
    the fastest within tolerance (rule in edge_agent/runtime/selection.py)."""
    cards = [
        c for c in find_models(models_dir) if c.family == family and runtime_available(c.backend)
    ]
    ref_card = _reference(cards)
    if ref_card is None:
        raise ModelError(f"{family}: no fp32 reference variant installed to judge accuracy")
    pre = ref_card.preprocessing
    n = int(AGREEMENT_SECONDS * (pre.rate_hz or 100.0))
    if pre.frame is not None:
        n = AGREEMENT_FRAMES
    x = bench_windows(ref_card, bench_samples(ref_card, n, seed=AGREEMENT_SEED))
    # loaded and scored once; its golden vectors are judged in the loop like every variant's
    ref_model = load_model(ref_card.directory, profile, validate=False)
    ref_scores = ref_model.scores(x)
    speed = {r.model: r.pipeline_us.median for r in results}
    candidates = []
    for c in cards:
        if c.name not in speed:
            continue
        is_ref = c.name == ref_card.name
        model = ref_model if is_ref else load_model(c.directory, profile, validate=False)
        try:
            model.check_golden()
            golden_ok = True
        except ModelError as e:
            log.warning("%s", e)
            golden_ok = False
        bound = bound_from_card(c.raw)
        scores = ref_scores if is_ref else model.scores(x)
        ratio = None if bound is None else agreement_ratio(scores, ref_scores, bound)
        candidates.append(
            Candidate(
                f"{c.precision}-{c.backend}",
                c.name,
                speed[c.name],
                is_ref,
                golden_ok,
                ratio,
            )
        )
    return choose_variant(family, candidates)
