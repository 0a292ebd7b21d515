"""The demo end to end through the real CLI, and the demo's events against ground truth."""

import json

import pytest

from edge_agent.pipeline.alarms import AlarmPolicy, Transition
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import load_model
from edge_agent.sources.base import Block
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal
from tests.agentutil import MODELS, read_status, run_cli

N_SAMPLES = 2000 * 16 + 64  # the demo's --max-windows 2000 at hop 16
VARIANTS = ["vibration-ae-fp32-onnx", "vibration-ae-int8-onnx", "vibration-ae-int8-tflite"]


def test_demo_run_scores_windows_and_reports_events(tmp_path):
    state = tmp_path / "state"
    r = run_cli("run", "--demo", "--max-windows", "2000", "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    st = read_status(state)
    assert st["running"] is False
    (s,) = st["streams"]
    assert 2000 <= s["windows"] <= 2002  # stops within one block of the limit
    # the stop line and the stream's line give one count
    assert f"stopped: {s['windows']} windows scored (--max-windows 2000)" in r.stdout
    assert f"demo: {s['windows']} windows," in r.stdout
    assert s["alarms"] >= 5  # anomalies injected at 30, 90, 150, 210, 270 s of 320 s
    assert st["events_total"] == s["events"] >= 9
    assert s["model"]["precision"] == "int8"
    # the technician's view of the same run, after the agent stopped
    r = run_cli("status", "--state-dir", str(state), "--json")
    assert r.returncode == 3, r.stdout + r.stderr  # DOWN: the agent is not running
    view = json.loads(r.stdout)
    (vs,) = view["state"]["streams"]
    assert vs["windows"] == s["windows"]
    assert vs["events"] == s["events"]
    assert view["stale"] is True


def _events(model_dir):
    model = load_model(model_dir, Profile(name="t"))
    pre = model.card.preprocessing
    pipe = StreamPipeline(
        "t",
        model,
        AlarmPolicy(model.card.threshold, min_on=2, min_off=3),
        window=pre.window,
        hop=pre.hop,
    )
    sig = SyntheticSignal(SignalSpec())
    evs = []
    for start in range(0, N_SAMPLES, 256):
        evs += pipe.process(Block(sig.render(start, 256), start / 100.0, start, 100.0))
    return evs, sig


def _starts(evs):
    return [e.window_start for e in evs if e.transition is Transition.START]


def _first_alarm_per_anomaly(evs, truth):
    """{anomaly index: first alarm start (samples)}; raises on an alarm outside all anomalies."""
    out = {}
    for s in _starts(evs):
        t = s / 100.0
        # the window that opens the alarm overlaps the anomaly (window = 0.64 s)
        hits = [i for i, a in enumerate(truth) if a.start_s - 0.64 <= t <= a.end_s]
        assert hits, f"false alarm at {t:.2f} s (anomalies: {truth})"
        out.setdefault(hits[0], s)
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_alarms_on_every_injected_anomaly_and_nothing_else(variant):
    if "tflite" in variant:
        pytest.importorskip("ai_edge_litert")
    evs, sig = _events(MODELS / variant)
    truth = sig.anomalies_between(0, N_SAMPLES / 100.0)
    assert len(truth) == 5
    found = _first_alarm_per_anomaly(evs, truth)
    assert sorted(found) == list(range(len(truth))), f"missed: {set(range(5)) - set(found)}"


def test_variants_give_consistent_events_on_the_same_windows():
    pytest.importorskip("ai_edge_litert")
    truth = SyntheticSignal(SignalSpec()).anomalies_between(0, N_SAMPLES / 100.0)
    firsts = {v: _first_alarm_per_anomaly(_events(MODELS / v)[0], truth) for v in VARIANTS}
    ref = firsts["vibration-ae-fp32-onnx"]
    for v, f in firsts.items():
        assert f.keys() == ref.keys(), v
        # the first alarm of each anomaly starts within 4 windows (4 x 16 samples) of fp32's
        worst = max(abs(f[k] - ref[k]) for k in ref)
        assert worst <= 4 * 16, (v, f, ref)
