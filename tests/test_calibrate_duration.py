"""`edge-agent calibrate --duration S` on a recording: S seconds of the file's own time,
not whatever was read in S seconds of wall time (the file is read as fast as it goes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.runtime.card import load_card
from tests.agentutil import MODELS, run_cli

PCA = MODELS / "skab-pca-fp32-onnx"
PRE = load_card(PCA, verify_hash=False).preprocessing


def _setup(tmp_path, rows: int, step_s: float):
    rng = np.random.default_rng(7)
    x = PRE.mean + 0.5 * PRE.std * rng.standard_normal((rows, len(PRE.mean)))
    names = [f"c{i}" for i in range(len(PRE.mean))]
    lines = ["time," + ",".join(names)]
    lines += [f"{1.7e9 + i * step_s}," + ",".join(f"{v:.6g}" for v in r) for i, r in enumerate(x)]
    csv = tmp_path / "rec.csv"
    csv.write_text("\n".join(lines) + "\n")
    cols = ", ".join(f'"{c}"' for c in names)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-t"\nstate_dir = "{tmp_path / "state"}"\n[mqtt]\nenabled = false\n'
        f'[[streams]]\nname = "pump"\nmodel = "{PCA}"\n'
        f'[streams.source]\nkind = "replay"\npath = "{csv}"\ncolumns = [{cols}]\n'
        f'timestamp_column = "time"\nspeed = 1\n'
    )
    return cfg


@pytest.mark.parametrize(("step_s", "duration", "expect"), [(1.0, 600, 600), (300.0, 36000, 120)])
def test_duration_on_a_recording_counts_the_files_time(tmp_path, step_s, duration, expect):
    cfg = _setup(tmp_path, 2000, step_s)
    r = run_cli("calibrate", "--config", str(cfg), "--duration", str(duration), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_samples"] == expect  # not the whole 2000-row file
