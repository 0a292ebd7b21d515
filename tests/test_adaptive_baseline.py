"""Adaptive baseline (issue 16): follows slow drift, settles after level shifts, frozen
while an alarm is open, still catches faults after each shift; fixed stays in alarm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.modelbuild.build import BuildSpec, build
from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.baseline import AdaptiveBaseline, ChangeKind
from edge_agent.pipeline.baseline_config import BaselineConfig
from edge_agent.pipeline.baseline_follower import BaselineFollower, baseline_path
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.runtime.model import load_model
from edge_agent.sources.base import Block
from tests.agentutil import read_status, run_cli

RATE = 1.0
SETTLE_S, FOLLOW_S = 300.0, 1800.0
SHIFTS = (3000, 7000)  # level shifts (a set point moved), 6 std each
FAULTS = (5000, 9500)  # a 60 s fault of 5 std after each shift
N = 12_000


def signal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + np.sin(2 * np.pi * t / 60) + 0.3 * rng.standard_normal(n)


def long_recording(std: float) -> np.ndarray:
    """Two level shifts, a slow drift of 2 std over the whole run, a fault after each shift."""
    y = signal(N, 7) + np.linspace(0, 2 * std, N)
    for s in SHIFTS:
        y[s:] += 6 * std
    for f in FAULTS:
        y[f : f + 60] += 5 * std
    return y


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("baseline-model")
    x = signal(3000, 1)
    csv = d / "normal.csv"
    csv.write_text("t,temp\n" + "\n".join(f"{i},{v:.4f}" for i, v in enumerate(x)) + "\n")
    build(BuildSpec(data=(csv,), columns=("temp",), out=d / "m", timestamp_column="t"))
    return d / "m", float(np.std(x))


# -- the pure rules ------------------------------------------------------------------


def _tracker(**kw: float) -> AdaptiveBaseline:
    return AdaptiveBaseline([0.0], [1.0], rate_hz=1.0, follow_s=100.0, settle_s=50.0, **kw)


def test_following_is_rate_bounded_and_only_when_quiet():
    t = _tracker()
    block = np.full((10, 1), 10.0)
    assert t.update(block, quiet=False, alarm_open=False) is None  # above threshold: frozen
    ch = t.update(block, quiet=True, alarm_open=False)
    assert ch is not None
    assert ch.kind is ChangeKind.FOLLOW
    assert 0.9 < ch.mean[0] <= 1.0  # 10 samples of a 100 s time constant: a tenth of the way


def test_frozen_while_an_alarm_is_open_until_a_steady_level_has_held_settle_s():
    t = _tracker()
    rng = np.random.default_rng(0)
    for _ in range(4):  # 40 s of alarm: shorter than settle_s, nothing learnt
        assert t.update(8 + rng.standard_normal((10, 1)), quiet=False, alarm_open=True) is None
    assert t.mean[0] == 0.0
    ch = None
    for _ in range(2):
        ch = t.update(8 + rng.standard_normal((10, 1)), quiet=False, alarm_open=True) or ch
    assert ch is not None
    assert ch.kind is ChangeKind.RELEARN
    assert abs(ch.mean[0] - 8) < 0.6
    assert t.relearns == 1


@pytest.mark.parametrize(
    "fault",
    [
        lambda i, rng: 0.5 * i + rng.standard_normal((10, 1)),  # a ramp: trend, not a level
        lambda i, rng: 8 + 6 * rng.standard_normal((10, 1)),  # noisy: not normal operation
    ],
    ids=["ramp", "noise"],
)
def test_an_ongoing_fault_that_is_not_a_steady_level_is_never_learnt(fault):
    t = _tracker()
    rng = np.random.default_rng(1)
    for i in range(30):  # 300 s of alarm, 6 x settle_s
        assert t.update(fault(i, rng), quiet=False, alarm_open=True) is None
    assert t.mean[0] == 0.0


def test_std_never_falls_below_its_floor():
    t = _tracker()
    for _ in range(100):
        t.update(np.zeros((10, 1)), quiet=True, alarm_open=False)
    assert t.std[0] == pytest.approx(0.5)


# -- through the stream pipeline -------------------------------------------------------


def _run(model_dir: Path, y: np.ndarray, state: Path, adaptive: bool) -> list[tuple[str, float]]:
    m = load_model(model_dir / "m-int8-onnx")
    a = m.card.alarm
    policy = AlarmPolicy(
        m.card.threshold, min_on=a.min_on, min_off=a.min_off, hysteresis=a.hysteresis
    )
    p = StreamPipeline("s", m, policy, window=10, hop=1, max_batch=64)
    cfg = BaselineConfig("adaptive", follow_s=FOLLOW_S, settle_s=SETTLE_S)
    follower = BaselineFollower(state, "s", cfg, p) if adaptive else None
    events = []
    for s in range(0, len(y), 64):
        blk = Block(y[s : s + 64, None].astype(np.float32), float(s), s, RATE)
        events += [(e.transition.value, e.ts) for e in p.process(blk)]
        if follower is not None:
            follower.after_block(blk)
    return events


def _check_adaptive(events: list[tuple[str, float]]) -> None:
    """An alarm at each shift that closes within settle_s + 120 s; each fault caught."""
    starts = [t for e, t in events if e == "start"]
    ends = [t for e, t in events if e == "end"]
    assert len(starts) == len(ends) == 4, events
    for onset, start, end in zip(sorted(SHIFTS + FAULTS), starts, ends, strict=True):
        assert onset <= start < onset + 30, (onset, events)
        limit = SETTLE_S + 120 if onset in SHIFTS else 60 + 60
        assert end < onset + limit, (onset, events)


def test_adaptive_baseline_settles_after_each_shift_and_still_catches_faults(built, tmp_path):
    model_dir, std = built
    y = long_recording(std)
    fixed = _run(model_dir, y, tmp_path / "fixed", adaptive=False)
    assert fixed == [("start", fixed[0][1])]  # opens at the first shift, never closes
    assert SHIFTS[0] <= fixed[0][1] < SHIFTS[0] + 30
    _check_adaptive(_run(model_dir, y, tmp_path / "adaptive", adaptive=True))
    saved = json.loads(baseline_path(tmp_path / "adaptive", "s").read_text())
    assert saved["relearns"] == 2
    assert saved["mean"][0] > 50 + 12 * std  # two 6-std set-point moves (and the drift)


# -- through the CLI: a real agent replaying the recording --------------------------------


@pytest.mark.slow
def test_agent_with_adaptive_baseline_reports_and_persists_it(built, tmp_path):
    model_dir, std = built
    y = long_recording(std)
    csv = tmp_path / "long.csv"
    csv.write_text("t,temp\n" + "\n".join(f"{i}.0,{v:.4f}" for i, v in enumerate(y)) + "\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "t"\nstate_dir = "{tmp_path / "state"}"\n[mqtt]\nenabled = false\n'
        f'[[streams]]\nname = "line"\nmodel = "{model_dir}"\nvariant = "int8-onnx"\n'
        f'[streams.source]\nkind = "replay"\npath = "{csv}"\ncolumns = ["temp"]\n'
        'timestamp_column = "t"\nspeed = 0\n'
        f'[streams.baseline]\nmode = "adaptive"\nfollow_s = {FOLLOW_S}\nsettle_s = {SETTLE_S}\n'
    )
    r = run_cli("run", "--config", str(cfg), timeout=180)
    assert r.returncode == 0, r.stderr
    ev = run_cli("events", "--state-dir", str(tmp_path / "state"), "--json")
    _check_adaptive([(e["event"], e["t_sample"]) for e in json.loads(ev.stdout)])
    (s,) = read_status(tmp_path / "state")["streams"]
    assert s["baseline"]["mode"] == "adaptive"
    assert s["baseline"]["relearns"] == 2
    assert s["baseline"]["shift_std"][0] > 12
    assert baseline_path(tmp_path / "state", "line").is_file()
