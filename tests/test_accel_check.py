"""`python -m edge_agent.runtime.accel_check`, the check a technician runs on a Jetson
(docs/install.md), run here on CPU: the Jetson profile without a GPU build of
onnxruntime fails with the reason the docs show; the CPU provider named as the
accelerator passes, with one model unbound and bound again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_agent.runtime.accel_check import main
from tests.agentutil import REPO


def test_the_jetson_profile_without_the_gpu_build_fails_saying_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--profile", "jetson-orin-nano"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "providers available:" in lines[0]
    assert "CUDAExecutionProvider" not in lines[0], "this is the CPU build"
    assert lines[1].startswith("profile jetson-orin-nano wants TensorrtExecutionProvider")
    fails = [ln for ln in lines if ln.startswith("[FAIL]")]
    assert len(fails) == 3
    for ln in fails:
        assert "not bound, providers CPUExecutionProvider; binds 0" in ln
        assert "scores match CPU" in ln, "the fallback serves the same scores"
        assert ln.endswith(
            "fallback: not available in this onnxruntime build: "
            "TensorrtExecutionProvider, CUDAExecutionProvider"
        )
    assert lines[-1].startswith("accel-check: FAIL")


def test_the_cpu_as_accelerator_binds_unbinds_and_binds_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--profile", "jetson-orin-nano", "--providers", "CPUExecutionProvider"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("accel-check: PASS (2 unbind(s)")
    assert "[ok  ] vibration-ae-fp32-onnx: bound, providers CPUExecutionProvider; binds 2" in out
    assert "[ok  ] inspection-ae-fp32-onnx: unbound now, providers -; binds 1" in out


def test_json_output_runs_as_a_module() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "edge_agent.runtime.accel_check", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    found = json.loads(p.stdout)
    assert p.returncode == 0, p.stderr  # this machine's profile wants the CPU only
    assert found["ok"] is True
    assert found["unbinds"] == 2
    assert {m["model"] for m in found["models"]} == {
        "vibration-ae-fp32-onnx",
        "inspection-ae-fp32-onnx",
        "skab-ae-fp32-onnx",
    }
    for m in found["models"]:
        assert m["ever_bound"] is True
        assert m["scores_match"] is True
        assert m["fallback"] == ""


def test_an_unknown_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models", "no-such-model"]) == 2
    assert "no ONNX model in:" in capsys.readouterr().err
