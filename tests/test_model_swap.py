"""A model swap is atomic with its normalisation and its alarm policy.

An OTA promotion, a rollback or an on-site calibration swaps what serves a stream
while the stream's thread is scoring. Every window must be normalised with the
statistics of the model that scores it, and judged by that model's policy: never the
old model's normalisation with the new model, or the other way round.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.pipeline.windows import Windows, samples_needed
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from tests.agentutil import MODELS

BLOCK = 512  # ~29 windows a block: two batches of up to 16, scored one after the other
WINDOWS = 6000


def test_swaps_during_scoring_never_mix_one_models_normalisation_with_another() -> None:
    base = load_model(MODELS / "vibration-ae-fp32-onnx", Profile(name="t"))
    mean, std = base.norm_stats
    # A calibration far from the card's: a window normalised for one and scored as if
    # normalised for the other is off by about two standard deviations everywhere.
    other = base.with_normalization(mean + 2 * std, 3 * std)
    servings = [(base, AlarmPolicy(0.5)), (other, AlarmPolicy(0.25))]
    thresholds = {id(m): p.threshold for m, p in servings}
    pipe = StreamPipeline("s", base, servings[0][1], window=64, hop=16, max_batch=16)
    raw = SyntheticSignal(SignalSpec(anomalies=False)).render(0, samples_needed(64, 16, WINDOWS))

    seen: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], LoadedModel, float]] = []

    def hook(w: Windows, scores: npt.NDArray[np.float64], model: LoadedModel) -> None:
        seen.append((w.data.copy(), w.starts.copy(), model, pipe.policy.threshold))

    pipe.shadow = hook
    done = threading.Event()
    errors: list[BaseException] = []
    # The pipeline's lock is not fair and a block holds it while it is scored: a swapper
    # left to itself can be starved until the stream is over, or fall into a rhythm of an
    # even number of swaps per block, so one model serves every block. Instead each block
    # asks for exactly one swap as it is handed in: the swap races that block for the lock
    # (before it, or waiting until it is scored), whichever way the threads are scheduled.
    swap_wanted, swap_done = threading.Semaphore(0), threading.Semaphore(0)

    def stream() -> None:
        try:
            for i, start in enumerate(range(0, len(raw), BLOCK)):
                # the previous block's swap is done (60 s at most): one swap per block
                if i and not swap_done.acquire(timeout=60):
                    raise AssertionError("no swap for 60 s")
                swap_wanted.release()
                pipe.process(Block(raw[start : start + BLOCK], start / 100.0, start, 100.0))
        except BaseException as e:  # noqa: BLE001 - re-raised by the test thread
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=stream)
    t.start()
    swaps = 0
    while not done.is_set():
        if swap_wanted.acquire(timeout=0.1):
            model, policy = servings[(swaps + 1) % 2]
            thresholds[id(model)] = policy.threshold
            pipe.swap_model(model, AlarmPolicy(policy.threshold))
            swaps += 1
            swap_done.release()
    t.join(60)
    assert errors == []
    assert swaps > 10, "the test did not swap while scoring"
    models_used = {id(m) for _, _, m, _ in seen}
    assert models_used == {id(base), id(other)}, "both normalisations served"
    windows = 0
    for data, starts, model, threshold in seen:
        idx = starts[:, None] + np.arange(64)[None, :]
        # Normalised with this model's statistics: back through them it is the raw signal.
        np.testing.assert_allclose(model.denormalize(data), raw[idx], atol=2e-3)
        assert threshold == thresholds[id(model)], "the policy went with its model"
        windows += len(data)
    assert windows == WINDOWS  # no window lost across the swaps
