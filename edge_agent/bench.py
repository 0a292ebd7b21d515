"""`edge-agent bench`: core speed figures measured side by side in one run.

For each installed model variant of a family: raw backend time per window at batch 1
and batched, and the full pipeline's time per window on the same windows (windowing,
normalisation, inference, scoring, alarm policy), with the overhead = pipeline minus
time inside the runtime. Each figure is the median over repeats, with min and max.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel, find_models, load_model
from edge_agent.runtime.registry import runtime_available
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal

__all__ = ["Figure", "VariantResult", "bench_family"]


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


def _time_pipeline(
    model: LoadedModel, samples: np.ndarray, block: int, batch: int
) -> tuple[float, float, int]:
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
    t0 = time.perf_counter()
    for s in range(0, len(samples), block):
        pipe.process(Block(samples[s : s + block], 0.0, s, pre.rate_hz or 1.0))
    total = time.perf_counter() - t0
    n = pipe.stats.windows
    return total / n * 1e6, (total - be.total_s) / n * 1e6, n


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
        n_samples = (windows - 1) * pre.hop + pre.window
        samples = SyntheticSignal(SignalSpec(seed=1)).render(0, n_samples)
        # Windows exactly as the pipeline will cut them, for the raw figures.
        x = np.stack([samples[i * pre.hop : i * pre.hop + pre.window] for i in range(windows)])
        block = pre.hop * batch  # one block = one full batch of new windows
        r1, rb, pl, ov = [], [], [], []
        n = 0
        for _ in range(repeats):
            r1.append(_time_raw(model, x, 1))
            rb.append(_time_raw(model, x, batch))
            p, o, n = _time_pipeline(model, samples, block, batch)
            pl.append(p)
            ov.append(o)
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
            )
        )
    return results


def as_json(results: list[VariantResult]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        d = asdict(r)
        d["pipeline_vs_raw_batched"] = r.pipeline_vs_raw_batched
        out.append(d)
    return out
