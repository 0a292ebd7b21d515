"""Input for `edge-agent bench` and its variant selection, shaped for any model card.

A device has no data set, so each kind of model gets the input it was built for:
- an image model (card `preprocessing.frame`): the synthetic inspection view
  (`synth_scene.model_samples`), a quarter of the frames with a defect;
- a model of the demo signal's channels: the demo signal (`synth_signal`);
- any other model (e.g. SKAB's 8 channels): its card's golden windows, raw and laid
  end to end, repeated; the only real data of that machine a device holds.
The cards' `agreement` bounds are stated on the same input (the image and demo
families) or on data of the same kind (SKAB: anomaly-free windows).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.windows import Windower
from edge_agent.runtime.card import ModelCard
from edge_agent.sources.synth_scene import model_samples
from edge_agent.sources.synth_signal import CHANNELS, SignalSpec, SyntheticSignal

__all__ = ["FRAME_DEFECT_RATE", "bench_samples", "bench_windows"]

FRAME_DEFECT_RATE = 0.25


def bench_samples(card: ModelCard, n: int, seed: int) -> npt.NDArray[np.float32]:
    """n raw samples (n, columns) for this card's model."""
    pre = card.preprocessing
    if pre.frame is not None:
        h, w = pre.frame
        x, _ = model_samples(seed, n, h, w, defect_rate=FRAME_DEFECT_RATE)
        return x
    if tuple(pre.channels) == CHANNELS:
        out: npt.NDArray[np.float32] = SyntheticSignal(SignalSpec(seed=seed)).render(0, n)
        return out
    g = card.golden.inputs  # (k, window, columns)
    flat = g.reshape(-1, g.shape[2])
    reps = -(-n // len(flat))
    return np.ascontiguousarray(np.tile(flat, (reps, 1))[:n], dtype=np.float32)


def bench_windows(card: ModelCard, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Every window the pipeline cuts from `samples` with the card's window and hop."""
    pre = card.preprocessing
    return Windower(pre.window, pre.hop, pre.columns).push(samples, 0).data
