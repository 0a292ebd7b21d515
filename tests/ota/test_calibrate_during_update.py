"""Remote calibration and OTA updates take turns: a real running stream (fp32 model), a
real updater with real signed bundles, the `calibrate` handler wired as the agent wires
it (applied through `Updater.call_between_updates`, busy while the slots are mid-update).

- Between updates the fitted calibration is applied on the updater's thread.
- A calibration fitted while an update is in its shadow (the candidate was set up with
  the stream's old calibration) is discarded, never applied; a new start is refused
  until the update ends. (The update is held in its shadow by the updater's test hook,
  which keeps answering jobs as a shadow wait does.)"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import NOW, Env
from otamodels import REPO, _rewrite_card
from rig import PROFILE, announce, make_bundle, ota_config

from edge_agent.pipeline.calibration import calibration_path, load_calibration
from edge_agent.service.remote_calibration import CalibrationControl, slots_busy
from edge_agent.service.remote_commands import CommandError
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from edge_agent.updates.updater import PAUSE_ENV, Updater, UpdateTarget
from tests.live_stream import Serving, wait

INT8 = REPO / "models" / "vibration-ae-int8-onnx"
WINDOWS = 30  # 528 samples: about 5 s of the stream's 100 Hz


def _state(s: Serving) -> str:
    return str(s.rt.live.snapshot().get("state"))


@pytest.fixture
def stream(env: Env) -> Iterator[Serving]:
    s = Serving(env.tmp / "state", PROFILE, variant="fp32-onnx")
    try:
        yield s
    finally:
        s.close()


def updater_for(env: Env, s: Serving) -> Updater:
    return Updater(
        state_dir=s.state_dir, ota=ota_config(env), profile=PROFILE, root=env.root,
        targets=[UpdateTarget(s.rt.pipeline, s.rt.config, s.rt)], clock=NOW.timestamp,
    )  # fmt: skip


def control_for(s: Serving, up: Updater) -> CalibrationControl:
    return CalibrationControl(
        [s.rt],
        s.state_dir,
        update_busy=lambda: slots_busy(up.store),
        hand_over=up.call_between_updates,
    )


def test_applied_on_the_updaters_thread_between_updates(env: Env, stream: Serving) -> None:
    up = updater_for(env, stream)
    ctl = control_for(stream, up)
    up.start()
    try:
        ctl.handle({"action": "start", "windows": WINDOWS})
        assert wait(lambda: _state(stream) not in ("collecting", "fitting", "applying"), 120)
    finally:
        up.stop()
    live = stream.rt.live.snapshot()
    assert live["state"] == "applied", live
    stored = load_calibration(stream.state_dir, "line")
    assert stored is not None
    assert stored.model_sha256 == stream.rt.pipeline.model.card.sha256
    assert stream.rt.pipeline.threshold == pytest.approx(stored.threshold)


def test_fitted_during_an_updates_shadow_is_discarded_and_a_start_refused(
    env: Env, stream: Serving, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PAUSE_ENV, "shadow")  # the update holds in its shadow, running jobs
    up = updater_for(env, stream)
    ctl = control_for(stream, up)
    rt = stream.rt
    threshold = rt.pipeline.threshold
    # a collection far longer than the update needs to reach its shadow (320 s of data)
    ctl.handle({"action": "start", "windows": 2000})
    shutil.copytree(INT8, env.tmp / "int8-v2")  # same channels and window, another file
    cand = _rewrite_card(env.tmp / "int8-v2", version=2)
    bundle = make_bundle(env, cand, "v2.bundle")
    t = threading.Thread(target=up.process, args=(announce(bundle),), daemon=True)
    t.start()
    try:
        assert wait((up.dir / "paused-at-shadow").exists, 120)
        assert _state(stream) == "collecting"
        # the rest of the collection now, beside the stream's own blocks (normal signal)
        rest = SyntheticSignal(SignalSpec(anomalies=False)).render(0, 64 + 1999 * 16)
        rt.live.feed(rest.astype(np.float32))
        assert wait(lambda: _state(stream) == "discarded", 120), rt.live.snapshot()
        assert "OTA update is in progress (shadow)" in rt.live.snapshot()["reason"]
        assert not calibration_path(stream.state_dir, "line").exists()
        assert rt.calibration is None
        assert rt.pipeline.threshold == threshold
        with pytest.raises(CommandError, match=r"update is in progress \(shadow\)"):
            ctl.handle({"action": "start", "windows": WINDOWS})
        assert _state(stream) == "discarded"
    finally:
        up.stop()
        t.join(30)
