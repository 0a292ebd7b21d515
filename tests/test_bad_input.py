"""Bad input gets a specific error or a counted, reported skip; nothing crashes silently."""

import json
import shutil

import numpy as np
import pytest

from edge_agent.errors import ModelError, SourceError
from edge_agent.runtime.model import load_model
from edge_agent.sources.replay import Options, ReplaySource
from tests.agentutil import MODELS, read_status, run_cli

INT8 = MODELS / "vibration-ae-int8-onnx"


def _copy_model(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(INT8, d)
    return d


def test_malformed_config_exits_2_naming_file_and_key(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'device_id = "gw"\n[[streams]]\nname = "s"\n'
        'source = {kind = "synthetic", rate_hz = "fast"}\n'
    )
    r = run_cli("run", "--config", str(cfg), "--state-dir", str(tmp_path / "st"))
    assert r.returncode == 2
    assert "agent.toml: streams[0].source.rate_hz: expected a number" in r.stderr
    r = run_cli("config", "validate", str(cfg))
    assert r.returncode == 2
    assert "streams[0].source.rate_hz" in r.stderr


def test_valid_config_validates(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('device_id = "gw"\n[[streams]]\nname = "s"\nsource = {kind = "synthetic"}\n')
    r = run_cli("config", "validate", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_missing_model_file_is_named(tmp_path):
    d = _copy_model(tmp_path)
    (d / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"model file missing"):
        load_model(d)


def test_corrupt_model_file_fails_its_hash(tmp_path):
    d = _copy_model(tmp_path)
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"does not match the card's"):
        load_model(d)


def test_corrupt_card_is_named(tmp_path):
    d = _copy_model(tmp_path)
    (d / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"unreadable model card"):
        load_model(d)


def test_card_edited_golden_scores_fail_validation(tmp_path):
    """A model that does not reproduce its card's golden vectors never serves."""
    d = _copy_model(tmp_path)
    card = json.loads((d / "model.json").read_text())
    card["golden"]["scores"] = [-(s + 1) for s in card["golden"]["scores"]]  # impossible for MSE
    (d / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"golden vector \d scores .* card expects"):
        load_model(d)


def test_agent_with_corrupt_model_exits_1_and_says_why(tmp_path):
    d = _copy_model(tmp_path)
    (d / "model.onnx").write_bytes(b"garbage")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw"\n[[streams]]\nname = "s"\nmodel = "{d}"\n'
        'source = {kind = "synthetic"}\n'
    )
    r = run_cli(
        "run", "--config", str(cfg), "--state-dir", str(tmp_path / "st"), "--max-windows", "10"
    )
    assert r.returncode == 1
    assert "does not match the card's" in r.stderr


def _write_csv(path, rows):
    path.write_text("t,vib_x,vib_y,vib_z,current\n" + "\n".join(rows) + "\n")


def test_replay_skips_and_counts_bad_rows_and_withholds_nan_windows(tmp_path):
    rng = np.random.default_rng(0)
    rows = [f"{i / 100},{','.join(f'{v:.4f}' for v in rng.normal(size=4))}" for i in range(3000)]
    rows[100] = "1.0,abc,1,2,3"  # text in a number column
    rows[200] = "2.0,1,2"  # wrong field count
    rows[1500] = "15.0,nan,0.1,0.2,4.0"  # a NaN reading
    csv = tmp_path / "rec.csv"
    _write_csv(csv, rows)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'device_id = "gw"\n[[streams]]\nname = "rec"\n'
        f'source = {{kind = "replay", path = "{csv}", timestamp_column = "t", speed = 0}}\n'
    )
    state = tmp_path / "st"
    r = run_cli("run", "--config", str(cfg), "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    (s,) = read_status(state)["streams"]
    assert s["counters"]["bad_rows"] == 2
    # each skipped row is a hole: windowing restarts after it (rows 0-99, 101-199, 201-2999)
    assert s["gaps"] == 2
    assert s["skipped_windows"] == 4  # window 64, hop 16: four windows hold the NaN row
    runs = (100, 99, 2799)
    assert s["windows"] == sum((n - 64) // 16 + 1 for n in runs) - 4
    assert s["source_state"] == "finished"


def test_replay_missing_column_is_specific(tmp_path):
    csv = tmp_path / "rec.csv"
    _write_csv(csv, ["0,1,2,3,4"])
    src = ReplaySource("r", Options(path=str(csv), columns=("vib_x", "speed")))
    with pytest.raises(SourceError, match=r"columns not in header: \['speed'\]"):
        src.open()


def test_replay_npy(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.arange(40, dtype=np.float32).reshape(10, 4))
    src = ReplaySource("r", Options(path=str(p), speed=0, block=4))
    src.open()
    blocks = []
    while (b := src.read(0.1)) is not None:
        blocks.append(b)
    assert src.finished
    assert [b.seq for b in blocks] == [0, 4, 8]
    np.testing.assert_array_equal(
        np.concatenate([b.samples for b in blocks])[:, 0], np.arange(0, 40, 4)
    )
