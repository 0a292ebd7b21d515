"""Remote calibration of a running stream, in-process: a real stream (synthetic source,
bundled vibration-ae model on the real runtime) serving on its own thread, the command
handler called as the MQTT thread would. What the real agent and broker add is in
tests/fleet/test_fleet_calibrate.py; here the rules that need a stream's model swapped
or an update in progress at a chosen moment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import CalibrationError
from edge_agent.pipeline.calibration import calibration_path
from edge_agent.pipeline.live_calibration import LiveCalibration, LiveRequest, LiveState
from edge_agent.profiles import Profile
from edge_agent.runtime.model import load_model
from edge_agent.service.remote_calibration import CalibrationControl
from edge_agent.service.remote_commands import CommandError
from tests.agentutil import MODELS
from tests.live_stream import Serving, wait

WINDOWS = 30  # vibration-ae: window 64, hop 16 -> 528 samples, 5 s at 100 Hz


def _request(windows: int = WINDOWS) -> LiveRequest:
    return LiveRequest(windows, 64, 16, 3, "m v1", "ab" * 32, 0.0, 0)


def test_collects_exactly_what_it_needs_and_hands_it_over_once() -> None:
    live = LiveCalibration()
    got: list[np.ndarray] = []
    live.start(_request(), got.append)
    x = np.arange(600 * 3, dtype=np.float32).reshape(600, 3)
    for i in range(0, 600, 16):
        live.feed(x[i : i + 16])
    assert len(got) == 1
    assert np.array_equal(got[0], x[:528])
    assert live.state is LiveState.FITTING
    with pytest.raises(CalibrationError, match="already calibrating"):
        live.start(_request(), got.append)
    assert live.begin_apply()
    with pytest.raises(CalibrationError, match="too late to stop"):
        live.stop(1.0)
    live.finish(LiveState.APPLIED, 2.0, threshold=0.5)
    snap = live.snapshot()
    assert snap["state"] == "applied"
    assert snap["threshold"] == 0.5
    assert snap["collected"] == snap["needed"] == 528


def test_a_stop_before_the_apply_wins_and_nothing_is_applied() -> None:
    live = LiveCalibration()
    live.start(_request(), lambda _x: None)
    live.feed(np.ones((600, 3), np.float32))
    assert live.state is LiveState.FITTING  # fitted, waiting for where models are swapped
    live.stop(1.0)
    assert not live.begin_apply()
    live.finish(LiveState.APPLIED, 2.0)  # a late outcome does not overwrite the stop
    assert live.snapshot()["state"] == "stopped"
    with pytest.raises(CalibrationError, match="no calibration in progress"):
        live.stop(3.0)
    live.start(_request(), lambda _x: None)  # and a new one may start
    live.abandon(4.0, "the stream stopped")
    assert live.snapshot()["state"] == "failed"
    assert live.snapshot()["error"] == "the stream stopped"


# -- a real stream ------------------------------------------------------------------------


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    s = Serving(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _state(s: Serving) -> str:
    return str(s.rt.live.snapshot().get("state"))


def _ticked_past_fitting(ctl: CalibrationControl, s: Serving) -> bool:
    ctl.tick()
    return _state(s) not in ("collecting", "fitting")


def test_applied_on_the_thread_it_is_handed_to_and_scoring_never_stops(serving: Serving) -> None:
    jobs: list[Callable[[], None]] = []  # the updater's job queue, run by this test

    def hand_over(job: Callable[[], None]) -> bool:
        jobs.append(job)
        return True

    ctl = CalibrationControl([serving.rt], serving.state_dir, hand_over=hand_over)
    rt = serving.rt
    card_threshold = rt.pipeline.threshold
    res = ctl.handle({"action": "start", "windows": WINDOWS})
    assert res["live"]["state"] == "collecting"
    w0 = rt.pipeline.stats.windows
    assert wait(lambda: len(jobs) == 1)  # collected and fitted on the stream's thread
    assert rt.pipeline.stats.windows - w0 >= WINDOWS - 1  # it scored all along
    assert _state(serving) == "fitting"
    assert rt.pipeline.threshold == card_threshold  # nothing applied before the job runs
    assert not calibration_path(serving.state_dir, "line").exists()
    jobs.pop()()
    live = rt.live.snapshot()
    assert live["state"] == "applied", live
    assert rt.pipeline.threshold == pytest.approx(live["threshold"]) != card_threshold
    assert rt.calibration is not None
    assert rt.calibration.n_windows == WINDOWS
    assert calibration_path(serving.state_dir, "line").exists()
    assert rt.calibration_snapshot()["state"] == "calibrated"


def test_discarded_when_the_model_was_swapped_meanwhile(serving: Serving) -> None:
    ctl = CalibrationControl([serving.rt], serving.state_dir)  # no updater: the tick applies
    rt = serving.rt
    ctl.handle({"action": "start", "windows": WINDOWS})
    other = load_model(MODELS / "vibration-ae-fp32-onnx", Profile(name="t"))
    assert other.card.sha256 != rt.pipeline.model.card.sha256
    rt.pipeline.swap_model(other)  # e.g. an update promoted while it collected
    # "fitting" is set before the fit runs on the stream's thread; the apply job is queued
    # only after it: tick (the agent's 1 Hz turn) until it has been taken
    assert wait(lambda: _ticked_past_fitting(ctl, serving))
    live = rt.live.snapshot()
    assert live["state"] == "discarded"
    assert "model changed meanwhile" in live["reason"]
    assert rt.pipeline.model is other  # still serving as the swap left it
    assert rt.calibration is None
    assert not calibration_path(serving.state_dir, "line").exists()


def test_refused_during_an_update_and_discarded_if_one_began_meanwhile(
    serving: Serving,
) -> None:
    phase = ["shadow"]

    def busy() -> str:
        return f"an OTA update is in progress ({phase[0]})" if phase[0] else ""

    ctl = CalibrationControl([serving.rt], serving.state_dir, update_busy=busy)
    with pytest.raises(CommandError, match=r"update is in progress \(shadow\); nothing changed"):
        ctl.handle({"action": "start", "windows": WINDOWS})
    assert serving.rt.live.snapshot() == {}
    phase[0] = ""
    ctl.handle({"action": "start", "windows": WINDOWS})
    phase[0] = "validated"  # an update's candidate is being set up with the old one
    # "fitting" is set before the fit runs on the stream's thread; the apply job is queued
    # only after it: tick (the agent's 1 Hz turn) until it has been taken
    assert wait(lambda: _ticked_past_fitting(ctl, serving))
    assert _state(serving) == "discarded"
    assert serving.rt.calibration is None
    assert not calibration_path(serving.state_dir, "line").exists()


def test_refused_while_the_automatic_calibration_collects(tmp_path: Path) -> None:
    s = Serving(tmp_path, calibrate_windows=20000)
    try:
        ctl = CalibrationControl([s.rt], s.state_dir)
        with pytest.raises(CommandError, match=r"already calibrating \(automatic: "):
            ctl.handle({"action": "start"})
        assert s.rt.live.snapshot() == {}
    finally:
        s.close()
