"""`bench --select`: the tolerance rule, the recorded choice, and streams honouring it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import ModelError
from edge_agent.measure.benchstats import Goal, LatencySummary, percentile, speedup
from edge_agent.profiles import Profile
from edge_agent.resources import find_resource_dir
from edge_agent.runtime.model import resolve_model_dir
from edge_agent.runtime.selection import (
    SELECTED_FILE,
    AgreementBound,
    Candidate,
    agreement_ratio,
    bound_from_card,
    choose_variant,
    read_selected,
    selected_variant,
    write_selected,
)

ROOT = Path(__file__).resolve().parent.parent
PROFILE = Profile(name="t", backends=("onnx",), precision=("int8", "fp32"))


def cand(
    variant: str, us: float, *, ref: bool = False, golden: bool = True, agr: float | None = 0.5
):
    return Candidate(variant, f"m-{variant}", us, ref, golden, agr)


# -- percentiles and ratios ----------------------------------------------------------
def test_percentile_interpolates_like_numpy():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 7.5]
    for q in (0, 1, 25, 50, 90, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_refuses_empty_and_out_of_range():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_latency_summary_p50_p99():
    s = LatencySummary.of([float(i) for i in range(1, 101)])
    assert (s.n, s.p50, s.max) == (100, 50.5, 100.0)
    assert s.p99 == pytest.approx(99.01)


def test_speedup_direction_for_latency_and_throughput():
    assert speedup(0.1, 2.0, lower_is_better=True) == pytest.approx(20.0)  # 0.1 ms vs 2 ms
    assert speedup(5000.0, 1000.0, lower_is_better=False) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="positive"):
        speedup(0.0, 1.0, lower_is_better=True)


def test_goal_at_least_and_under():
    assert Goal("lat", 20.0, 20.0, at_least=True).met
    assert not Goal("lat", 19.9, 20.0, at_least=True).met
    assert Goal("rss", 79.9, 80.0, at_least=False).met
    assert not Goal("rss", 80.0, 80.0, at_least=False).met


# -- the tolerance rule ----------------------------------------------------------------
def test_fastest_variant_within_tolerance_wins():
    c = choose_variant("f", [cand("fp32-onnx", 5.0, ref=True), cand("int8-onnx", 3.0)])
    assert (c.variant, c.model) == ("int8-onnx", "m-int8-onnx")
    assert "fp32-onnx" in c.reason


def test_int8_is_not_chosen_when_slower_than_fp32():
    c = choose_variant("f", [cand("fp32-onnx", 3.0, ref=True), cand("int8-onnx", 4.0)])
    assert c.variant == "fp32-onnx"


def test_faster_variant_outside_agreement_bound_is_rejected():
    c = choose_variant("f", [cand("fp32-onnx", 5.0, ref=True), cand("int8-onnx", 1.0, agr=1.01)])
    assert c.variant == "fp32-onnx"
    assert dict(c.rejected)["int8-onnx"].startswith("scores outside the card's agreement bound")


def test_variant_without_a_stated_bound_is_rejected():
    c = choose_variant("f", [cand("fp32-onnx", 5.0, ref=True), cand("int8-tflite", 1.0, agr=None)])
    assert c.variant == "fp32-onnx"
    assert "no agreement bound" in dict(c.rejected)["int8-tflite"]


def test_failed_golden_vectors_reject_even_the_reference():
    with pytest.raises(ModelError, match=r"no variant is within tolerance.*golden"):
        choose_variant("f", [cand("fp32-onnx", 5.0, ref=True, golden=False)])


def test_nan_agreement_is_rejected():
    c = choose_variant(
        "f", [cand("fp32-onnx", 5.0, ref=True), cand("int8-onnx", 1.0, agr=float("nan"))]
    )
    assert c.variant == "fp32-onnx"


def test_agreement_ratio_applies_atol_plus_rtol():
    ref = np.array([0.0, 1.0, 10.0])
    b = AgreementBound(atol=0.1, rtol=0.1)
    assert agreement_ratio(ref + np.array([0.1, 0.2, 1.1]), ref, b) == pytest.approx(1.0)
    assert agreement_ratio(ref + np.array([0.0, 0.4, 0.0]), ref, b) == pytest.approx(2.0)
    assert agreement_ratio(np.array([np.nan, 1.0, 10.0]), ref, b) == float("inf")
    with pytest.raises(ModelError):
        agreement_ratio(ref[:2], ref, b)


def test_bound_from_card():
    assert bound_from_card({}) is None
    assert bound_from_card({"agreement": {"bound": {"atol": 0.9, "rtol": 0.01}}}) == (
        AgreementBound(0.9, 0.01)
    )
    with pytest.raises(ModelError, match="atol and rtol"):
        bound_from_card({"agreement": {"bound": {"atol": "x", "rtol": 0.01}}})


# -- persistence ------------------------------------------------------------------------
def test_choice_is_recorded_per_family_and_read_back(tmp_path):
    write_selected(tmp_path, choose_variant("a", [cand("fp32-onnx", 1.0, ref=True)]), 1.0)
    write_selected(tmp_path, choose_variant("b", [cand("int8-onnx", 1.0, ref=True)]), 2.0)
    assert selected_variant(tmp_path, "a") == "fp32-onnx"
    assert selected_variant(tmp_path, "b") == "int8-onnx"
    assert selected_variant(tmp_path, "c") is None
    assert read_selected(tmp_path)["b"]["measured_at"] == 2.0


def test_corrupt_selection_file_is_ignored(tmp_path):
    (tmp_path / SELECTED_FILE).write_text("{not json")
    assert selected_variant(tmp_path, "a") is None
    (tmp_path / SELECTED_FILE).write_text('{"families": []}')
    assert read_selected(tmp_path) == {}


# -- resolve_model_dir honours the recorded choice -----------------------------------
@pytest.fixture
def models_dir() -> Path:
    d = find_resource_dir("models")
    if d is None or not (d / "vibration-ae-fp32-onnx").is_dir():
        pytest.skip("demo models not built")
    return d


def _record(state: Path, variant: str) -> None:
    write_selected(state, choose_variant("vibration-ae", [cand(variant, 1.0, ref=True)]), 0.0)


def test_auto_variant_follows_the_recorded_choice(tmp_path, models_dir):
    auto = resolve_model_dir("vibration-ae", "auto", PROFILE, models_dir, tmp_path)
    assert auto.name == "vibration-ae-int8-onnx"  # the profile's preference: nothing recorded
    _record(tmp_path, "fp32-onnx")
    got = resolve_model_dir("vibration-ae", "auto", PROFILE, models_dir, tmp_path)
    assert got.name == "vibration-ae-fp32-onnx"
    # without a state dir (or with an explicit variant) the record is not consulted
    assert resolve_model_dir("vibration-ae", "auto", PROFILE, models_dir).name.endswith("int8-onnx")
    explicit = resolve_model_dir("vibration-ae", "int8-onnx", PROFILE, models_dir, tmp_path)
    assert explicit.name == "vibration-ae-int8-onnx"


def test_recorded_choice_no_longer_installed_falls_back_to_profile(tmp_path, models_dir):
    _record(tmp_path, "fp16-onnx")
    got = resolve_model_dir("vibration-ae", "auto", PROFILE, models_dir, tmp_path)
    assert got.name == "vibration-ae-int8-onnx"


@pytest.mark.slow
def test_bench_select_records_a_choice_the_agent_then_runs(tmp_path, models_dir):
    state = tmp_path / "state"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent",
            "bench",
            "--select",
            "--json",
            "--windows",
            "128",
            "--repeats",
            "1",
            "--state-dir",
            str(state),
            "--models-dir",
            str(models_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    chosen = out["selected"]["variant"]
    assert chosen == selected_variant(state, "vibration-ae")
    by_variant = {x["variant"]: x for x in out["results"]}
    assert chosen in by_variant
    assert by_variant[chosen]["windows_per_cpu_s"]["median"] > 0
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent",
            "run",
            "--demo",
            "--max-windows",
            "64",
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    status = json.loads((state / "status.json").read_text())
    assert status["streams"][0]["model"]["name"] == out["selected"]["model"]
