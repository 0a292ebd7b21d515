"""A stream's on-site calibration across a model update, in-process with a real
pipeline fed from a thread, a real updater and real signed bundles. The machine runs
at twice the amplitude the models were built on: on the cards' normalisation every
window alarms, calibrated none does.

- A new model of the same family reading the same channels with the same window (the
  int8 variant: another model file) is shadowed, promoted and tried *with* the
  stream's calibration, is committed, and the calibration is stored for it too.
- A new model reading other channels is not given the calibration: it runs on its
  card's normalisation, and status says so instead of showing the old calibration."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import NOW, Env
from otamodels import FP32, REPO, _rewrite_card
from rig import PROFILE, Feeder, announce, make_bundle, ota_config

from edge_agent.config import AlarmConfig, SourceSpec, StreamConfig
from edge_agent.pipeline.calibration import (
    Calibration,
    apply_calibration,
    fit_calibration,
    load_for_model,
    save_calibration,
)
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.runtime.model import load_model
from edge_agent.sources.synth_signal import SyntheticSignal
from edge_agent.sources.synthetic import Options
from edge_agent.streams import build_policy
from edge_agent.updates.updater import Updater, UpdateTarget

GAIN = 2.0
INT8 = REPO / "models" / "vibration-ae-int8-onnx"


@dataclass
class StreamStatus:
    """What status shows of the stream's calibration (the stream runtime's fields)."""

    calibration: Calibration | None
    calibration_note: str = ""


@dataclass
class Device:
    env: Env
    pipeline: StreamPipeline
    updater: Updater
    status: StreamStatus
    calibration: Calibration
    published: list[dict[str, object]]


@pytest.fixture
def device(env: Env, request: pytest.FixtureRequest) -> Iterator[Device]:
    state = env.tmp / "state"
    model = load_model(FP32, PROFILE)
    samples = (SyntheticSignal().render(0, 3200) * GAIN).astype(np.float32)
    cal = fit_calibration(model, samples, stream="vib", now=1.0, window=64, hop=16)
    save_calibration(state, cal)
    alarm = AlarmConfig(threshold=getattr(request, "param", 0.0))
    sc = StreamConfig(name="vib", source=SourceSpec("synthetic", Options()), alarm=alarm)
    served = apply_calibration(model, cal)
    pipe = StreamPipeline("vib", served, build_policy(sc, served, cal), window=64, hop=16)
    status = StreamStatus(cal)
    published: list[dict[str, object]] = []
    up = Updater(
        state_dir=state, ota=ota_config(env), profile=PROFILE, root=env.root,
        targets=[UpdateTarget(pipe, sc, status)], publish=published.append,
        clock=NOW.timestamp,
    )  # fmt: skip
    feeder = Feeder(pipe, gain=GAIN)
    t = threading.Thread(target=feeder.run, daemon=True)
    t.start()
    try:
        yield Device(env, pipe, up, status, cal, published)
    finally:
        feeder.stop.set()
        up.stop()
        t.join(5)
    assert not feeder.errors


def model_copy(src: Path, dst: Path, version: int, channels: list[str] | None = None) -> Path:
    shutil.copytree(src, dst)
    if channels is not None:
        card = json.loads((dst / "model.json").read_text())
        card["preprocessing"]["channels"] = channels
        (dst / "model.json").write_text(json.dumps(card))
    return _rewrite_card(dst, version=version)


def normalised(model_dir_or_pipe: StreamPipeline) -> np.ndarray:
    return model_dir_or_pipe.model.normalize(np.ones((1, 4), dtype=np.float32))


def test_calibration_carries_over_to_a_new_model_of_the_same_channels_and_window(
    device: Device,
) -> None:
    cand = model_copy(INT8, device.env.tmp / "int8-v2", 2)
    b = make_bundle(device.env, cand, "v2.bundle")
    assert device.updater.process(announce(b)) == "committed", device.published[-1]
    served = device.pipeline.model.card
    assert (served.version, served.name) == (2, "vibration-ae-int8-onnx")
    cal = device.calibration
    want = (1.0 - np.asarray(cal.mean)) / np.asarray(cal.std)
    np.testing.assert_allclose(normalised(device.pipeline)[0], want, rtol=1e-5)
    assert device.pipeline.threshold == pytest.approx(cal.threshold)
    shadow = next(p for p in device.published if p["state"] == "promoted")["figures"]
    assert isinstance(shadow, dict)
    assert shadow["candidate_alarm_rate"] == 0.0  # on the card's values it would be 1.0
    assert device.status.calibration is not None
    assert served.sha256 in device.status.calibration.carried_to
    assert "carried over to vibration-ae-int8-onnx v2" in device.status.calibration_note
    stored = load_for_model(device.env.tmp / "state", "vib", served)  # after a restart
    assert stored is not None
    assert stored.threshold == cal.threshold


@pytest.mark.parametrize("device", [1e9], indirect=True)  # no alarms: shadow cannot judge
def test_calibration_for_other_channels_is_dropped_and_status_says_so(device: Device) -> None:
    chans = ["vib_x", "vib_y", "vib_z", "motor_current"]
    cand = model_copy(FP32, device.env.tmp / "v2", 2, channels=chans)
    b = make_bundle(device.env, cand, "v2.bundle")
    assert device.updater.process(announce(b)) == "committed", device.published[-1]
    assert device.pipeline.model.card.version == 2
    card_norm = load_model(cand, PROFILE).normalize(np.ones((1, 4), dtype=np.float32))
    np.testing.assert_allclose(normalised(device.pipeline), card_norm)
    assert device.status.calibration is None  # never shown once it no longer applies
    note = device.status.calibration_note
    assert "does not carry over to vibration-ae-fp32-onnx v2" in note, note
    assert "motor_current" in note
    assert "re-calibrate" in note
