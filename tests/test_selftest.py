import json
import shutil

from tests.agentutil import MODELS, run_cli


def test_selftest_passes_on_the_demo_and_checks_the_model(tmp_path):
    r = run_cli("selftest", "--state-dir", str(tmp_path / "st"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["model [demo]"]["ok"]
    assert "golden vectors reproduce" in checks["model [demo]"]["detail"]
    assert checks["state dir"]["ok"]


def test_selftest_fails_on_a_tampered_model_and_says_which(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(MODELS / "vibration-ae-int8-onnx", d)
    with (d / "model.onnx").open("ab") as f:
        f.write(b"\0")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw"\n[mqtt]\nport = 1\n[[streams]]\nname = "press"\nmodel = "{d}"\n'
        'source = {kind = "synthetic"}\n'
    )
    r = run_cli("selftest", "--config", str(cfg), "--state-dir", str(tmp_path / "st"))
    assert r.returncode == 1
    assert "[FAIL] model [press]" in r.stdout
    assert "does not match the card's" in r.stdout
    assert "[warn] broker" in r.stdout  # an unreachable broker is reported, not fatal


def test_selftest_checks_the_variant_this_device_selected(tmp_path):
    """The model `run` would serve: the variant `bench --select` recorded, not the
    profile's default (they differed before: selftest ignored the recorded choice)."""
    from edge_agent.runtime.selection import Choice, write_selected

    st = tmp_path / "st"
    write_selected(
        st, Choice("vibration-ae", "fp32-onnx", "vibration-ae-fp32-onnx", 1.0, "t", ()), 0.0
    )
    r = run_cli("selftest", "--state-dir", str(st), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert "vibration-ae-fp32-onnx" in checks["model [demo]"]["detail"]
