"""`edge-agent calibrate` on a recording: as fast as it reads, with progress, in the
user's channel names (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.runtime.card import load_card
from tests.agentutil import MODELS, run_cli

PCA = MODELS / "skab-pca-fp32-onnx"
CARD = load_card(PCA, verify_hash=False)
USER = ("acc1", "acc2", "amps", "bar", "water_c", "tc", "volts", "flow")  # the site's names


def _recording(path, rows: int, step_s: float) -> None:
    """Normal data around the card's operating point, one row every `step_s` seconds."""
    pre = CARD.preprocessing
    rng = np.random.default_rng(4)
    x = pre.mean + 0.5 * pre.std * rng.standard_normal((rows, len(pre.mean)))
    lines = ["time," + ",".join(USER)]
    lines += [f"{1.7e9 + i * step_s}," + ",".join(f"{v:.6g}" for v in r) for i, r in enumerate(x)]
    path.write_text("\n".join(lines) + "\n")


def _config(tmp_path, csv, speed: float):
    cols = ", ".join(f'"{c}"' for c in USER)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-t"\nstate_dir = "{tmp_path / "state"}"\n[mqtt]\nenabled = false\n'
        f'[[streams]]\nname = "pump"\nmodel = "{PCA}"\n'
        f'[streams.source]\nkind = "replay"\npath = "{csv}"\ncolumns = [{cols}]\n'
        f'timestamp_column = "time"\nspeed = {speed}\n'
    )
    return cfg


def test_calibrating_on_a_slow_recording_does_not_wait_for_its_timestamps(tmp_path):
    csv = tmp_path / "five-minute-rows.csv"
    _recording(csv, 700, step_s=300.0)  # 609 windows of 5-minute data: 2 days at real time
    cfg = _config(tmp_path, csv, speed=1.0)  # the stream itself replays at real time
    r = run_cli("calibrate", "--config", str(cfg), "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_windows"] == 600
    assert "609/609 samples (100 %)" in r.stderr  # progress, ending at the whole budget
    assert out["source_channels"] == list(USER)
    assert "it applies at the next start" in r.stderr


def test_calibrate_prints_the_users_channel_names_beside_the_models(tmp_path):
    csv = tmp_path / "rec.csv"
    _recording(csv, 400, step_s=1.0)
    r = run_cli("calibrate", "--config", str(_config(tmp_path, csv, 0.0)), "--samples", "300")
    assert r.returncode == 0, r.stderr
    assert "samples 300, windows 291" in r.stdout
    for user, card in zip(USER, CARD.preprocessing.channels, strict=True):
        assert f"  {user} (model channel {card}): mean " in r.stdout


@pytest.mark.parametrize("opt", ["--samples", "--windows", "--duration"])
def test_calibrate_refuses_a_non_positive_budget(tmp_path, opt):
    csv = tmp_path / "rec.csv"
    _recording(csv, 50, step_s=1.0)
    r = run_cli("calibrate", "--config", str(_config(tmp_path, csv, 0.0)), opt, "0")
    assert r.returncode == 2
    assert f"{opt}: expected a positive number" in r.stderr


def test_a_refusal_names_the_users_column_too(tmp_path):
    csv = tmp_path / "rec.csv"
    _recording(csv, 400, step_s=1.0)
    text = csv.read_text().splitlines()
    # the site's "tc" sensor is stuck at one value: column 6 of the CSV
    fixed = [text[0]] + [",".join([*r.split(",")[:6], "28", *r.split(",")[7:]]) for r in text[1:]]
    csv.write_text("\n".join(fixed) + "\n")
    r = run_cli("calibrate", "--config", str(_config(tmp_path, csv, 0.0)))
    assert r.returncode == 1
    assert "Thermocouple" in r.stderr
    assert "Thermocouple = your 'tc'" in r.stderr
