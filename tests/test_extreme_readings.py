"""More abnormal is never quieter.

A finite reading far beyond anything in normal data must raise an alarm on every
bundled model family and variant. Before, int8 inputs saturated (a 1e6 reading looked
like a 17-sigma one, and the SKAB PCA and z-squared graphs then scored it below normal)
and float32 overflowed to inf/NaN, which the pipeline counted and scored as 0; float32
max, normalised, overflowed to inf and the window was withheld as a bad sample.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.pipeline.alarms import AlarmPolicy, Transition
from edge_agent.pipeline.stream import AnomalyEvent, StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import (
    FAR_SIGMAS,
    SATURATED_SCORE,
    LoadedModel,
    far_windows,
    load_model,
    score_outputs,
)
from edge_agent.service.status import Assessment, Snapshot, Verdict
from edge_agent.service.status_render import render_text
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from tests.agentutil import MODELS, read_status, run_cli

VARIANTS = sorted(p.parent.name for p in MODELS.glob("*/model.json"))
F32_MAX = float(np.finfo(np.float32).max)
EXTREMES = [1e6, 1e30, F32_MAX, -1e6, -1e30, -F32_MAX]
BURST = 3  # readings in a row: more windows than any card's min_on hold one of them


def _marks(variant: str) -> list[Any]:
    return [pytest.mark.tflite] if variant.endswith("tflite") else []


@functools.cache
def _model(variant: str) -> LoadedModel:
    return load_model(MODELS / variant, Profile(name="t"))


def _normal(model: LoadedModel) -> npt.NDArray[np.float32]:
    """Continuous normal samples for the model: the signal the vibration family was
    trained on; the card's golden frames that score below threshold (image models);
    the card's golden windows one hop apart (SKAB: consecutive rows of normal data)."""
    card = model.card
    pre = card.preprocessing
    if card.family == "vibration-ae":
        return SyntheticSignal(SignalSpec(anomalies=False)).render(0, 4096)
    g = card.golden
    if pre.window == 1:
        frames = g.inputs[g.scores < card.threshold / 2][:, 0, :]
        return np.tile(frames, (8, 1)).astype(np.float32)
    chained = np.concatenate([g.inputs[0], *[w[-pre.hop :] for w in g.inputs[1:]]])
    return np.tile(chained, (4, 1)).astype(np.float32)


def _run(model: LoadedModel, samples: npt.NDArray[np.float32]) -> list[AnomalyEvent]:
    card = model.card
    pre, a = card.preprocessing, card.alarm
    policy = AlarmPolicy(
        card.threshold, min_on=a.min_on, min_off=a.min_off, hysteresis=a.hysteresis
    )
    pipe = StreamPipeline("s", model, policy, window=pre.window, hop=pre.hop)
    events = pipe.process(Block(samples, 0.0, 0, pre.rate_hz))
    assert pipe.stats.skipped_windows == 0, "a finite reading is not a bad sample"
    return events


@pytest.mark.parametrize("variant", [pytest.param(v, marks=_marks(v)) for v in VARIANTS])
def test_normal_data_used_below_raises_no_alarm(variant: str) -> None:
    """The control for the test below: its alarms come from the extreme readings."""
    assert _run(_model(variant), _normal(_model(variant))) == []


@pytest.mark.parametrize("value", EXTREMES, ids=lambda v: f"{v:g}")
@pytest.mark.parametrize("variant", [pytest.param(v, marks=_marks(v)) for v in VARIANTS])
def test_readings_far_beyond_normal_data_raise_an_alarm(variant: str, value: float) -> None:
    model = _model(variant)
    samples = _normal(model)
    at = len(samples) // 2
    samples[at : at + BURST, 0] = value  # one channel (an image model: one pixel)
    events = _run(model, samples)
    starts = [e for e in events if e.transition is Transition.START]
    assert starts, f"{variant}: {value:g} on one channel raised no alarm"
    window = model.card.preprocessing.window
    first = starts[0]
    assert first.window_start <= at + BURST - 1 < first.window_start + window + BURST
    assert first.score >= first.threshold
    assert all(np.isfinite(e.score) and np.isfinite(e.peak) for e in events)


def test_far_windows_are_found_per_window_and_nan_is_not_far() -> None:
    x = np.zeros((4, 3, 2), np.float32)
    assert far_windows(x) is None
    x[1, 2, 1] = FAR_SIGMAS * 1.5
    x[3, 0, 0] = -FAR_SIGMAS * 2
    x[2, 0, 0] = np.nan
    far = far_windows(x)
    assert far is not None
    assert far.tolist() == [False, True, False, True]
    x[1, 2, 1] = x[3, 0, 0] = FAR_SIGMAS  # at the limit is still in range
    assert far_windows(x) is None


@pytest.mark.tflite
def test_a_window_beyond_the_models_range_scores_saturated_whatever_the_model_says() -> None:
    # The int8 LiteRT PCA graph saturates its input: one huge reading in a window leaves
    # the model's own score below the threshold (about 1 against 17).
    model = _model("skab-pca-int8-tflite")
    raw = model.card.golden.inputs[:2].copy()
    raw[1, 4, 0] = 1e6
    xn = model.normalize(raw)
    clipped = np.clip(xn, -2 * FAR_SIGMAS, 2 * FAR_SIGMAS).astype(np.float32)
    own = score_outputs(model.card.score_kind, clipped, model.backend.infer(clipped))
    assert own[1] < model.card.threshold
    scores = model.scores(raw)
    assert scores[0] == pytest.approx(own[0])  # an in-range window keeps its score
    assert scores[1] == SATURATED_SCORE


def test_status_text_shows_nonfinite_and_saturated_scores() -> None:
    st = {"streams": [{"name": "pump", "nonfinite_scores": 12, "saturated_windows": 3}]}
    ok = Assessment(Verdict.OK, ())
    text = render_text(Snapshot("/state", True, st), ok, 1000.0)
    lines = [ln.strip() for ln in text.splitlines()]
    assert "scores: 12 NaN/inf from the model (not alarmed)" in lines
    assert "scores: 3 windows beyond the model's range" in lines
    assert all(len(ln) <= 80 for ln in text.splitlines())
    quiet = {"streams": [{"name": "pump", "nonfinite_scores": 0, "saturated_windows": 0}]}
    assert "scores:" not in render_text(Snapshot("/state", True, quiet), ok, 1000.0)


@pytest.mark.parametrize(
    "variant",
    [pytest.param("skab-pca-int8-tflite", marks=pytest.mark.tflite), "skab-zsq-fp32-onnx"],
)
def test_agent_alarms_on_readings_far_beyond_normal_data_and_status_says_so(
    variant: str, tmp_path: Path
) -> None:
    """Through the real agent: a replay whose pressure reads 1e30 and float32 max for a
    few rows (the int8 graph saturates, the float32 one overflows) raises an alarm."""
    model = _model(variant)
    x = np.tile(_normal(model), (4, 1))  # room for each alarm to end before the next
    x[len(x) // 3 : len(x) // 3 + BURST, 3] = 1e30
    x[2 * len(x) // 3 : 2 * len(x) // 3 + BURST, 3] = F32_MAX
    csv = tmp_path / "pump.csv"
    rows = [f"{i};" + ";".join(repr(float(v)) for v in row) for i, row in enumerate(x)]
    channels = model.card.preprocessing.channels
    csv.write_text("time;" + ";".join(channels) + "\n" + "\n".join(rows) + "\n")
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-t"\nstate_dir = "{state}"\n[mqtt]\nenabled = false\n'
        f'[[streams]]\nname = "pump"\nmodel = "{MODELS / variant}"\n'
        f'[streams.source]\nkind = "replay"\npath = "{csv}"\ndelimiter = ";"\n'
        f'timestamp_column = "time"\nspeed = 0\n'
    )
    r = run_cli("run", "--config", str(cfg), "--duration", "30")
    assert r.returncode == 0, r.stderr
    (s,) = read_status(state)["streams"]
    assert s["alarms"] == 2, "one alarm per burst"
    assert not s["alarm_open"]
    assert s["saturated_windows"] >= 2 * BURST
    assert s["skipped_windows"] == 0
    assert s["nonfinite_scores"] == 0
    text = run_cli("status", "--state-dir", str(state)).stdout
    assert "windows beyond the model's range" in text
