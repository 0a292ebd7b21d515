"""`edge-agent bench --select` runs on every bundled model family, each with input of
its own shape (demo signal, SKAB's 8 channels, camera frames), and records a choice
whose accuracy it checked against the family's fp32 reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.runtime.selection import selected_variant
from tests.agentutil import run_cli
from tests.test_model_cards import _has_litert


@pytest.mark.parametrize("family", ["vibration-ae", "skab-zsq", "inspection-ae"])
def test_bench_select_on_each_family(tmp_path: Path, family: str) -> None:
    r = run_cli(
        "bench", "--family", family, "--windows", "64", "--repeats", "1",
        "--select", "--state-dir", str(tmp_path), "--json", timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    names = sorted(x["model"] for x in out["results"])
    want = [f"{family}-fp32-onnx", f"{family}-int8-onnx"]
    if _has_litert():
        want.append(f"{family}-int8-tflite")
    assert names == sorted(want)
    assert all(x["pipeline_us"]["median"] > 0 for x in out["results"])
    chosen = out["selected"]["variant"]
    assert selected_variant(tmp_path, family) == chosen
    # every variant reproduced its golden vectors and agreed with fp32 within its
    # card's bound on this machine's runtimes: none was rejected
    assert out["selected"]["rejected"] == {}


def test_select_into_an_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    r = run_cli(
        "bench", "--family", "vibration-ae", "--windows", "32", "--repeats", "1",
        "--select", "--state-dir", str(not_a_dir), timeout=180,
    )  # fmt: skip
    assert r.returncode == 1
    assert "cannot record the choice" in r.stderr
    assert "Traceback" not in r.stderr
