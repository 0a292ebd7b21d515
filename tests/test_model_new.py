"""`edge-agent model new`: from a user's CSV of normal data to a running agent that
alarms on injected faults, through the commands only (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.modelbuild.families import fit_ae, fit_family, fit_pca
from tests.agentutil import read_status, run_cli

CHANNELS = {1: ("temp",), 3: ("vib", "current", "pressure")}
FAULT_STARTS = (300, 700, 1100)  # rows of the faulty file; faults last FAULT_LEN rows
FAULT_LEN = 40


def machine(rows: int, channels: int, seed: int, t0: float = 0.0) -> np.ndarray:
    """A machine's normal signal: per channel a level, a slow cycle and sensor noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    cols = [
        20 + 3 * i + np.sin(2 * np.pi * t / (50 + 7 * i)) + 0.3 * rng.standard_normal(rows)
        for i in range(channels)
    ]
    return np.column_stack([t0 + t, *cols])


def write_csv(path: Path, table: np.ndarray, names: tuple[str, ...]) -> Path:
    lines = [",".join(("t", *names))]
    lines += [",".join(f"{v:.4f}" for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n")
    return path


def with_faults(table: np.ndarray) -> np.ndarray:
    """The same kind of signal with a level step on one channel at each FAULT_STARTS."""
    out = table.copy()
    for k, s in enumerate(FAULT_STARTS):
        ch = 1 + k % (out.shape[1] - 1)
        out[s : s + FAULT_LEN, ch] += 4.0
    return out


# -- families (pure) ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["zscore", "pca", "ae"])
@pytest.mark.parametrize("channels", [1, 2, 5])
def test_every_family_fits_any_channel_count_and_window(family, channels):
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 7, channels)).astype(np.float32)
    f = fit_family(family, train, epochs=2)
    assert (f.stack.window, f.stack.channels) == (7, channels)
    first = f.stack.layers[0][0]
    assert first.shape[0] == (channels if f.stack.pool else 7 * channels)


def test_pca_on_one_channel_is_t_squared_only():
    rng = np.random.default_rng(1)
    f = fit_pca(rng.standard_normal((300, 5, 1)).astype(np.float32))
    a, _, _ = f.stack.layers[0]
    assert a.shape == (1, 1)
    assert f.info["components"] == 1
    assert f.info["q_ref"] == 0.0


def test_pca_q_flags_a_broken_correlation_that_t_squared_misses():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((400, 1, 1))
    train = np.concatenate([base, base + 0.05 * rng.standard_normal((400, 1, 1))], axis=2)
    f = fit_pca(train.astype(np.float32))
    a, b, _ = f.stack.layers[0]
    normal = np.array([1.0, 1.0]) @ a + b
    broken = np.array([1.0, -1.0]) @ a + b  # each channel within its range, relation broken
    assert float(broken @ broken) > 20 * float(normal @ normal)


def test_autoencoder_training_lowers_the_reconstruction_error():
    rng = np.random.default_rng(3)
    t = np.arange(10)
    train = np.stack([np.sin(t / 3 + p) for p in rng.uniform(0, 6, 500)])[:, :, None]
    short = fit_ae(train.astype(np.float32), epochs=1)
    longer = fit_ae(train.astype(np.float32), epochs=40)
    assert longer.info["final_loss"] < 0.5 * short.info["final_loss"]


# -- bad input -------------------------------------------------------------------------


def test_model_new_names_a_missing_column(tmp_path):
    csv = write_csv(tmp_path / "n.csv", machine(300, 1, 0), ("temp",))
    r = run_cli(
        "model", "new", "--data", str(csv), "--columns", "temperature", "--out", str(tmp_path / "m")
    )
    assert r.returncode == 2
    assert "temperature" in r.stderr
    assert "--columns" in r.stderr


def test_model_new_refuses_a_constant_channel(tmp_path):
    table = machine(300, 2, 0)
    table[:, 2] = 5.0
    csv = write_csv(tmp_path / "n.csv", table, ("a", "stuck"))
    r = run_cli(
        "model", "new", "--data", str(csv), "--columns", "a,stuck", "--out", str(tmp_path / "m")
    )
    assert r.returncode == 2
    assert "'stuck' is constant" in r.stderr


def test_model_new_does_not_overwrite_without_force(tmp_path):
    csv = write_csv(tmp_path / "n.csv", machine(300, 1, 0), ("temp",))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    args = ("model", "new", "--data", str(csv), "--columns", "temp", "--out", str(tmp_path / "m"))
    r = run_cli(*args)
    assert r.returncode == 2
    assert "--force" in r.stderr
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"


# -- end to end: CSV -> model new -> edge-agent run ------------------------------------


def _config(tmp_path: Path, model: Path, variant: str, files: dict[str, Path], names) -> Path:
    cols = ", ".join(f'"{c}"' for c in names)
    text = f'device_id = "t"\nstate_dir = "{tmp_path / "state"}"\n'
    text += "[mqtt]\nenabled = false\n"  # records wait in the outbox
    for stream, path in files.items():
        text += (
            f'[[streams]]\nname = "{stream}"\nmodel = "{model}"\nvariant = "{variant}"\n'
            f'[streams.source]\nkind = "replay"\npath = "{path}"\ncolumns = [{cols}]\n'
            'timestamp_column = "t"\nspeed = 0\n'
        )
    cfg = tmp_path / f"agent-{variant}.toml"
    cfg.write_text(text)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("family", ["zscore", "pca", "ae"])
def test_csv_to_running_agent_alarms_on_injected_faults_only(tmp_path, family, channels):
    names = CHANNELS[channels]
    train = write_csv(tmp_path / "normal.csv", machine(2500, channels, 1), names)
    # the test files come from another day of the same machine (another noise seed)
    later = machine(1500, channels, 5, t0=10_000)
    normal = write_csv(tmp_path / "later-normal.csv", later, names)
    faulty = write_csv(tmp_path / "later-faulty.csv", with_faults(later), names)
    out = tmp_path / "my-model"
    r = run_cli(
        "model",
        "new",
        "--data",
        str(train),
        "--columns",
        ",".join(names),
        "--timestamp-column",
        "t",
        "--family",
        family,
        "--window",
        "10",
        "--epochs",
        "30",
        "--anomalous",
        str(faulty),
        "--out",
        str(out),
        "--json",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    report = built["report"]["variants"]
    assert report["fp32-onnx"]["held_out_normal"]["false_alarms"] == 0
    assert report["int8-onnx"]["agreement_with_fp32"]["decision_agreement"] >= 0.99
    card = json.loads((out / "my-model-int8-onnx" / "model.json").read_text())
    assert card["preprocessing"]["channels"] == list(names)
    variants = ["int8-onnx"]
    if (out / "my-model-int8-tflite").is_dir():
        variants.append("int8-tflite")
        assert report["int8-tflite"]["agreement_with_fp32"]["decision_agreement"] >= 0.99
    else:
        assert any("TFLite not built" in n for n in built["notes"])
    for variant in variants:
        (tmp_path / variant).mkdir()
        cfg = _config(tmp_path / variant, out, variant, {"faulty": faulty, "normal": normal}, names)
        run = run_cli("run", "--config", str(cfg), timeout=120)
        assert run.returncode == 0, run.stderr
        st = {s["name"]: s for s in read_status(tmp_path / variant / "state")["streams"]}
        assert st["faulty"]["model"]["name"] == f"my-model-{variant}"
        assert st["faulty"]["source_state"] == st["normal"]["source_state"] == "finished"
        assert st["normal"]["alarms"] == 0, f"{variant}: false alarm on held-out normal data"
        assert st["faulty"]["alarms"] == len(FAULT_STARTS), f"{variant}: {st['faulty']}"
        # the event history names the sample that decided each alarm: inside its fault
        ev = run_cli("events", "--state-dir", str(tmp_path / variant / "state"), "--json")
        assert ev.returncode == 0, ev.stderr
        starts = [e for e in json.loads(ev.stdout) if e["event"] == "start"]
        assert [e["stream"] for e in starts] == ["faulty"] * len(FAULT_STARTS)
        for e, row in zip(starts, FAULT_STARTS, strict=True):
            t_fault = later[row, 0]
            assert t_fault <= e["t_sample"] < t_fault + FAULT_LEN, (e, t_fault)
            assert e["t_sample"] in later[:, 0]  # a real sample's time, not a clock reading


def test_labelled_anomalous_files_give_row_wise_detection_figures(tmp_path):
    names = CHANNELS[3]
    train = write_csv(tmp_path / "a.csv", machine(1200, 3, 1), names)
    more = write_csv(tmp_path / "b.csv", machine(800, 3, 2, t0=5_000), names)
    faulty = with_faults(machine(1500, 3, 5, t0=10_000))
    label = np.zeros(len(faulty))
    for s in FAULT_STARTS:
        label[s : s + FAULT_LEN] = 1
    lines = [",".join(("t", *names, "fault"))]
    lines += [
        ",".join(f"{v:.4f}" for v in (*row, lab)) for row, lab in zip(faulty, label, strict=True)
    ]
    (tmp_path / "faulty.csv").write_text("\n".join(lines) + "\n")
    r = run_cli(
        "model", "new", "--data", str(train), str(more), "--columns", ",".join(names),
        "--timestamp-column", "t", "--anomalous", str(tmp_path / "faulty.csv"),
        "--label-column", "fault", "--out", str(tmp_path / "m"), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["report"]["variants"]["int8-onnx"]
    rows = report["anomalous"]["labelled_rows"]
    assert rows["tp"] + rows["fn"] == len(FAULT_STARTS) * FAULT_LEN
    assert rows["f1"] > 0.7  # the alarm opens min_on windows late and closes min_off late
    assert rows["far_percent"] < 5.0  # only each alarm's closing tail (min_off windows)
    (f,) = report["anomalous"]["files"]
    assert f["alarms"] == len(FAULT_STARTS)
    assert report["held_out_normal"]["rows"] == 240 + 160  # both files' tails
    assert (tmp_path / "m" / "REPORT.md").read_text().count("Labelled rows: F1") == 2
