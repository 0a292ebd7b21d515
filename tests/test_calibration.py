"""On-site calibration with a real SKAB model on the real runtime: fit, refuse, store, apply."""

import json
import logging

import numpy as np
import pytest

from edge_agent.config import parse_config
from edge_agent.errors import CalibrationError
from edge_agent.pipeline.calibration import (
    CalibrationParams,
    apply_calibration,
    calibration_path,
    fit_calibration,
    load_calibration,
    load_for_model,
    save_calibration,
)
from edge_agent.profiles import Profile
from edge_agent.runtime.card import load_card
from edge_agent.runtime.model import load_model
from edge_agent.streams import StreamRuntime
from tests.agentutil import MODELS, read_status, run_cli

PCA = MODELS / "skab-pca-fp32-onnx"
CHANNELS = load_card(PCA, verify_hash=False).preprocessing.channels


@pytest.fixture(scope="module")
def model():
    return load_model(PCA, Profile(name="t"))


def normal(model, n, noise, seed=0):
    """Samples around the card's operating point, `noise` x the card's std per channel."""
    pre = model.card.preprocessing
    rng = np.random.default_rng(seed)
    return (pre.mean + noise * pre.std * rng.standard_normal((n, len(pre.mean)))).astype(np.float32)


def test_threshold_follows_the_calibration_data(model):
    # Below the std floor (0.3 x card std) the normalisation cannot absorb the noise:
    # noisier normal data must give a higher threshold.
    quiet = fit_calibration(model, normal(model, 600, 0.05), stream="s", now=1.0)
    noisy = fit_calibration(model, normal(model, 600, 0.2), stream="s", now=1.0)
    assert noisy.threshold > 4 * quiet.threshold
    assert quiet.threshold == pytest.approx(quiet.score_quantile * 1.5)
    assert quiet.n_samples == 600
    assert quiet.n_windows == 600 - 10 + 1
    assert quiet.model_sha256 == model.card.sha256


def test_normalisation_is_fitted_per_channel(model):
    x = normal(model, 500, 2.0)
    x[:, 2] += 5.0  # another operating point: Current 5 A higher than the card's
    cal = fit_calibration(model, x, stream="s", now=0.0)
    assert cal.mean == pytest.approx(x.mean(0), rel=1e-5)
    assert cal.std == pytest.approx(x.std(0), rel=1e-4)  # above the floor: not floored
    m, _s = apply_calibration(model, cal).norm_stats
    assert m == pytest.approx(np.array(cal.mean, np.float32))
    # the calibrated model scores this machine's data like the card's model its own
    z = apply_calibration(model, cal).normalize(x)
    assert abs(float(z.mean())) < 1e-3


def test_constant_channel_is_refused_by_name(model):
    x = normal(model, 500, 1.0)
    x[:, 3] = 0.25
    with pytest.raises(CalibrationError, match=r"Pressure \(= 0.25\).*did not change"):
        fit_calibration(model, x, stream="s", now=0.0)


def test_nan_and_inf_are_refused_by_channel(model):
    x = normal(model, 500, 1.0)
    x[10, 0] = np.nan
    x[20:23, 7] = np.inf
    with pytest.raises(
        CalibrationError, match=r"Accelerometer1RMS \(1 samples\), Volume Flow RateRMS \(3"
    ):
        fit_calibration(model, x, stream="s", now=0.0)


def test_too_few_samples_for_the_window(model):
    with pytest.raises(CalibrationError, match="need at least 39"):
        fit_calibration(model, normal(model, 20, 1.0), stream="s", now=0.0)
    with pytest.raises(CalibrationError, match=r"expected \(samples, 8\)"):
        fit_calibration(model, normal(model, 100, 1.0)[:, :5], stream="s", now=0.0)


def test_bad_parameters_are_refused():
    with pytest.raises(CalibrationError, match="margin"):
        CalibrationParams(margin=0.5)


def test_store_reload_and_ignore_for_another_model(model, tmp_path, caplog):
    cal = fit_calibration(model, normal(model, 400, 1.0), stream="line/1", now=123.0)
    path = save_calibration(tmp_path, cal)
    assert path == tmp_path / "calibration" / "line%2F1.json"  # a name cannot leave the dir
    assert load_calibration(tmp_path, "line/1") == cal
    assert load_for_model(tmp_path, "line/1", model.card) == cal
    assert load_calibration(tmp_path, "other") is None
    other = load_model(MODELS / "skab-pca-int8-onnx", Profile(name="t")).card
    with caplog.at_level(logging.WARNING):
        assert load_for_model(tmp_path, "line/1", other) is None
    assert "ignored" in caplog.text
    assert "edge-agent calibrate" in caplog.text
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="unreadable"):
        load_calibration(tmp_path, "line/1")
    assert load_for_model(tmp_path, "line/1", model.card) is None  # warns, runs on the card


def _write_csv(path, x):
    lines = ["time;" + ";".join(CHANNELS)]
    lines += [f"{i};" + ";".join(f"{v:.6g}" for v in row) for i, row in enumerate(x)]
    path.write_text("\n".join(lines) + "\n")


def _config(tmp_path, csv, **stream):
    extra = "".join(f"{k} = {v}\n" for k, v in stream.items())
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-t"\nstate_dir = "{tmp_path / "state"}"\n'
        f"[mqtt]\nenabled = false\n"
        f'[[streams]]\nname = "pump"\nmodel = "{PCA}"\n{extra}'
        f'[streams.source]\nkind = "replay"\npath = "{csv}"\ndelimiter = ";"\n'
        f'timestamp_column = "time"\nspeed = 0\n'
    )
    return cfg


def test_stream_applies_stored_calibration_on_restart(model, tmp_path):
    csv = tmp_path / "pump.csv"
    x = normal(model, 300, 2.0, seed=3)
    _write_csv(csv, x)
    cfg = parse_config(
        {
            "state_dir": str(tmp_path),
            "streams": [
                {
                    "name": "pump",
                    "model": str(PCA),
                    "source": {
                        "kind": "replay",
                        "path": str(csv),
                        "delimiter": ";",
                        "timestamp_column": "time",
                    },
                }
            ],
        }
    )
    (sc,) = cfg.streams
    fresh = StreamRuntime(sc, cfg, Profile(name="t"), None)
    assert fresh.pipeline.threshold == model.card.threshold
    assert fresh.snapshot()["calibration"]["state"] == "none"
    cal = fit_calibration(model, x, stream="pump", now=5.0)
    save_calibration(tmp_path, cal)
    rt = StreamRuntime(sc, cfg, Profile(name="t"), None)  # "restart"
    assert rt.pipeline.threshold == cal.threshold != model.card.threshold
    assert rt.pipeline.model.norm_stats[0] == pytest.approx(np.array(cal.mean, np.float32))
    snap = rt.snapshot()["calibration"]
    assert snap["state"] == "calibrated"
    assert snap["threshold"] == cal.threshold
    # a calibration made for another model file is not applied
    raw = json.loads(calibration_path(tmp_path, "pump").read_text())
    raw["model_sha256"] = "0" * 64
    calibration_path(tmp_path, "pump").write_text(json.dumps(raw))
    rt2 = StreamRuntime(sc, cfg, Profile(name="t"), None)
    assert rt2.pipeline.threshold == model.card.threshold
    assert rt2.calibration is None


def test_calibrate_command_end_to_end(model, tmp_path):
    csv = tmp_path / "pump.csv"
    _write_csv(csv, normal(model, 400, 0.05, seed=1))
    cfg = _config(tmp_path, csv)
    r = run_cli("calibrate", "--config", str(cfg), "--windows", "200", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_samples"] == 209
    assert out["n_windows"] == 200
    assert out["previous_threshold"] is None
    stored = json.loads((tmp_path / "state" / "calibration" / "pump.json").read_text())
    assert stored["threshold"] == out["threshold"]
    assert stored["model_sha256"] == model.card.sha256
    # explicit re-calibration on noisier data: replaced, old -> new logged
    _write_csv(csv, normal(model, 400, 0.2, seed=2))
    r2 = run_cli("calibrate", "--config", str(cfg), "--stream", "pump", "--json")
    assert r2.returncode == 0, r2.stderr
    out2 = json.loads(r2.stdout)
    assert out2["previous_threshold"] == out["threshold"]
    assert out2["threshold"] > out["threshold"]
    assert f"threshold {out['threshold']:.6g} -> {out2['threshold']:.6g}" in r2.stderr
    assert out2["n_samples"] == 400  # the file ended before the default 600 windows
    # the technician sees it in `edge-agent models`, tied to the model it was fitted for
    r3 = run_cli("models", "--config", str(cfg), "--json")
    assert r3.returncode == 0, r3.stderr
    (cal,) = json.loads(r3.stdout)["calibrations"]
    assert cal["stream"] == "pump"
    assert cal["threshold"] == out2["threshold"]
    assert cal["model_sha256"] == model.card.sha256
    r4 = run_cli("models", "--config", str(cfg))
    assert f"calibrated [pump]: {model.card.name}" in r4.stdout


def test_calibrate_command_refuses_bad_data(model, tmp_path):
    csv = tmp_path / "pump.csv"
    x = normal(model, 300, 1.0)
    x[:, 5] = 28.0
    _write_csv(csv, x)
    r = run_cli("calibrate", "--config", str(_config(tmp_path, csv)))
    assert r.returncode == 1
    assert "Thermocouple (= 28) did not change" in r.stderr
    assert not (tmp_path / "state" / "calibration").exists()
    r = run_cli("calibrate", "--config", str(_config(tmp_path, csv)), "--stream", "nope")
    assert r.returncode == 2
    assert "no stream 'nope'" in r.stderr


def test_run_calibrates_automatically_on_first_windows(model, tmp_path):
    csv = tmp_path / "pump.csv"
    _write_csv(csv, normal(model, 800, 2.0, seed=4))
    cfg = _config(tmp_path, csv, calibrate_windows=300)
    r = run_cli("run", "--config", str(cfg), "--duration", "20")
    assert r.returncode == 0, r.stderr
    st = read_status(tmp_path / "state")
    (s,) = st["streams"]
    assert s["calibration"]["state"] == "calibrated"
    assert s["calibration"]["n_samples"] == 309
    assert s["threshold"] == s["calibration"]["threshold"]
    assert s["windows"] == 800 - 309 - 9  # the calibration samples are not scored
    assert (tmp_path / "state" / "calibration" / "pump.json").is_file()
    text = run_cli("status", "--state-dir", str(tmp_path / "state")).stdout
    assert "calibrated on site: " in text
