"""Short fit data (issue 16): a few hundred rows cannot show a slow drift, so a model
built from them alone alarms on normal operation later. The documented remedy: build
once from a long normal recording with `model new`, then `edge-agent calibrate` on the
site's short stretch, which floors each channel's std at a share of the card's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge_agent.pipeline.calibration import MIN_STD_RATIO
from tests.agentutil import read_status, run_cli

NAMES = ("flow", "temp")
SHORT = 400  # rows of the site's own recording used to fit or calibrate
FAULT = (1500, 40)  # start row, rows: a step on flow in the faulty file


def long_normal(rows: int = 6000) -> np.ndarray:
    """Weeks of normal operation: the temperature wanders through its whole range."""
    rng = np.random.default_rng(11)
    t = np.arange(rows)
    flow = 50 + np.sin(2 * np.pi * t / 50) + 0.3 * rng.standard_normal(rows)
    temp = 60 + 5 * np.sin(2 * np.pi * t / 2000) + 0.05 * rng.standard_normal(rows)
    return np.column_stack([t, flow, temp])


def site(rows: int, seed: int, fault: bool) -> np.ndarray:
    """The site: another operating point; the temperature creeps up by half a degree over
    the run (normal), so its first SHORT rows look nearly constant."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    flow = 55 + np.sin(2 * np.pi * t / 50) + 0.3 * rng.standard_normal(rows)
    temp = 62 + 0.5 * t / rows + 0.05 * rng.standard_normal(rows)
    if fault:
        flow[FAULT[0] : FAULT[0] + FAULT[1]] += 3.0
    return np.column_stack([1.7e9 + t, flow, temp])


def write_csv(path: Path, table: np.ndarray) -> Path:
    lines = [",".join(("t", *NAMES))]
    lines += [",".join(f"{v:.4f}" for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n")
    return path


def model_new(data: Path, out: Path, *extra: str) -> None:
    r = run_cli(
        "model", "new", "--data", str(data), "--columns", ",".join(NAMES),
        "--timestamp-column", "t", "--out", str(out), *extra, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def config(tmp: Path, model: Path, files: dict[str, Path]) -> Path:
    cols = ", ".join(f'"{c}"' for c in NAMES)
    text = f'device_id = "t"\nstate_dir = "{tmp / "state"}"\n[mqtt]\nenabled = false\n'
    for stream, path in files.items():
        text += (
            f'[[streams]]\nname = "{stream}"\nmodel = "{model}"\nvariant = "fp32-onnx"\n'
            f'[streams.source]\nkind = "replay"\npath = "{path}"\ncolumns = [{cols}]\n'
            'timestamp_column = "t"\nspeed = 0\n'
        )
    cfg = tmp / "agent.toml"
    cfg.write_text(text)
    return cfg


def alarms(cfg: Path, state: Path) -> dict[str, int]:
    r = run_cli("run", "--config", str(cfg), timeout=120)
    assert r.returncode == 0, r.stderr
    streams = read_status(state)["streams"]
    assert all(s["source_state"] == "finished" for s in streams)
    return {s["name"]: s["alarms"] for s in streams}


def test_a_model_from_a_short_stretch_alarms_on_a_slow_normal_drift(tmp_path):
    normal = write_csv(tmp_path / "site-normal.csv", site(2400, 3, fault=False))
    head = normal.read_text().splitlines()[: SHORT + 1]
    short = tmp_path / "site-first-rows.csv"
    short.write_text("\n".join(head) + "\n")
    model_new(short, tmp_path / "short", "--holdout", "0")
    got = alarms(config(tmp_path, tmp_path / "short", {"normal": normal}), tmp_path / "state")
    assert got["normal"] >= 1  # the failure the remedy below is for


def test_long_normal_model_calibrated_on_a_short_stretch_follows_the_drift(tmp_path):
    model = tmp_path / "pump"
    model_new(write_csv(tmp_path / "weeks.csv", long_normal()), model)
    card = json.loads((model / "pump-fp32-onnx" / "model.json").read_text())
    card_std = dict(zip(NAMES, card["preprocessing"]["std"], strict=True))
    files = {
        "normal": write_csv(tmp_path / "site-normal.csv", site(2400, 3, fault=False)),
        "faulty": write_csv(tmp_path / "site-faulty.csv", site(2400, 4, fault=True)),
    }
    cfg = config(tmp_path, model, files)
    for stream in files:
        r = run_cli(
            "calibrate", "--config", str(cfg), "--stream", stream,
            "--samples", str(SHORT), "--json", timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        cal = dict(zip(NAMES, json.loads(r.stdout)["std"], strict=True))
        # temp barely moved in SHORT rows: its std is the floor, not its own tiny std
        assert np.isclose(cal["temp"], MIN_STD_RATIO * card_std["temp"], rtol=1e-5)
        assert cal["flow"] > MIN_STD_RATIO * card_std["flow"]  # flow's own std, unfloored
    got = alarms(cfg, tmp_path / "state")
    assert got == {"normal": 0, "faulty": 1}, got
