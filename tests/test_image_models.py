"""The image model family (`inspection-ae`): cards keep their promises on the real
runtimes, and a camera stream scores a video file end to end through the agent."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import CalibrationError, ConfigError, ModelError
from edge_agent.runtime.card import card_from_dict, load_card
from edge_agent.runtime.model import load_model
from edge_agent.sources.synth_scene import DEFECTS, SceneSpec, model_samples, render, to_bgr
from tests.agentutil import MODELS, read_status, run_cli
from tests.test_model_cards import _has_litert, _params, reference_scores, within

DIRS = sorted(p.parent for p in MODELS.glob("inspection-ae-*/model.json"))
FP32 = MODELS / "inspection-ae-fp32-onnx"


def test_three_variants_are_committed() -> None:
    assert [d.name for d in DIRS] == [
        "inspection-ae-fp32-onnx",
        "inspection-ae-int8-onnx",
        "inspection-ae-int8-tflite",
    ]


@pytest.mark.parametrize("d", _params(DIRS))
def test_card_describes_a_32x32_frame_and_its_golden_vectors_reproduce(d: Path) -> None:
    card = load_card(d)
    pre = card.preprocessing
    assert pre.frame == (32, 32)
    assert pre.columns == 1024
    assert pre.window == 1
    assert card.golden.inputs.shape[1:] == (1, 1024)
    model = load_model(d)  # check_golden through the product path
    assert model.check_golden() <= 1.0
    g = card.golden
    assert within(reference_scores(card, g.inputs), g.scores, g.atol, g.rtol)
    # good frames below the threshold, one frame per defect above it
    kinds = card.raw["golden"]["kinds"]
    assert [k != "good" for k in kinds] == (g.scores > card.threshold).tolist()
    assert set(kinds) == {"good", *DEFECTS}


@pytest.mark.parametrize("d", _params([d for d in DIRS if "int8" in d.name]))
def test_int8_agrees_with_fp32_within_the_stated_bound(d: Path) -> None:
    card = load_card(d)
    bound = card.raw["agreement"]["bound"]
    x, _ = model_samples(21, 120, 32, 32, defect_rate=0.3)  # frames no build step saw
    got = load_model(d, validate=False).scores(x[:, None, :])
    ref = load_model(FP32, validate=False).scores(x[:, None, :])
    assert within(got, ref, bound["atol"], bound["rtol"])


@pytest.mark.parametrize("d", _params(DIRS))
def test_every_defect_kind_scores_above_and_good_parts_below(d: Path) -> None:
    model = load_model(d)
    thr = model.card.threshold
    good, _ = model_samples(22, 200, 32, 32)
    assert np.all(model.scores(good[:, None, :]) < thr)
    for kind in DEFECTS:
        bad, _ = model_samples(23, 40, 32, 32, defect_rate=1.0, defects=(kind,))
        hit = np.mean(model.scores(bad[:, None, :]) > thr)
        assert hit >= 0.95, (kind, hit)


def test_a_card_with_a_frame_must_have_one_channel_and_matching_golden_shape() -> None:
    raw = json.loads((FP32 / "model.json").read_text())
    two = json.loads(json.dumps(raw))
    two["preprocessing"]["channels"] = ["a", "b"]
    two["preprocessing"]["mean"] = [0.5, 0.5]
    two["preprocessing"]["std"] = [0.2, 0.2]
    with pytest.raises(ModelError, match="exactly one channel"):
        card_from_dict(two, FP32)
    small = json.loads(json.dumps(raw))
    small["preprocessing"]["frame"] = {"height": 16, "width": 16}
    with pytest.raises(ModelError, match=r"expected shape \(n, 1, 256\)"):
        card_from_dict(small, FP32)


# ---------------------------------------------------------------------------
# Through the agent: a camera stream reading a video file the test writes
# ---------------------------------------------------------------------------
# 12 good frames, 8 with a missing hole, 12 good, 8 with a scratch, 12 good
SCRIPT: list[str | None] = [None] * 12 + ["missing_hole"] * 8 + [None] * 12
SCRIPT += ["scratch"] * 8 + [None] * 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _inspection_video(path: Path) -> Path:
    cv2 = pytest.importorskip("cv2")
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (128, 96))
    assert w.isOpened()
    rng = np.random.default_rng(31)
    for kind in SCRIPT:
        w.write(to_bgr(render(rng, SceneSpec(), kind)))
    w.release()
    return path


def _config(tmp_path: Path, video: Path, variant: str, *, width: int = 32) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-cam"\nstate_dir = "{tmp_path / "state"}"\n'
        # nothing listens there: events spool to the outbox
        f'[mqtt]\nhost = "127.0.0.1"\nport = {_free_port()}\n'
        '[[streams]]\nname = "station1"\nmodel = "inspection-ae"\n'
        f'variant = "{variant}"\n'
        f'source = {{kind = "camera", url = "{video}", width = {width}, height = 32, '
        "fps_cap = 100}\n"
    )
    return cfg


@pytest.mark.camera
@pytest.mark.parametrize(
    "variant",
    [
        pytest.param("int8-onnx"),
        pytest.param(
            "int8-tflite",
            marks=[
                pytest.mark.tflite,
                pytest.mark.skipif(not _has_litert(), reason="ai-edge-litert not installed"),
            ],
        ),
    ],
)
def test_camera_stream_alarms_once_per_defect_run_and_never_on_good_parts(
    tmp_path: Path, variant: str
) -> None:
    video = _inspection_video(tmp_path / "station1.avi")
    r = run_cli("run", "--config", str(_config(tmp_path, video, variant)), timeout=90)
    assert r.returncode == 0, r.stderr
    st = read_status(tmp_path / "state")
    (s,) = st["streams"]
    assert s["model"]["name"] == f"inspection-ae-{variant}"
    # frames are paced at the file's 20 fps and the model keeps up: few or none skipped
    assert len(SCRIPT) - 6 <= s["windows"] <= len(SCRIPT)
    assert s["alarms"] == 2  # one per defect run, none on the 36 good frames
    assert s["events"] == 4  # start and end of each


@pytest.mark.camera
def test_frame_size_that_does_not_fit_the_model_is_refused_with_the_fix(tmp_path: Path) -> None:
    video = _inspection_video(tmp_path / "v.avi")
    r = run_cli("run", "--config", str(_config(tmp_path, video, "int8-onnx", width=64)))
    assert r.returncode != 0
    assert "32x32 grayscale frame" in r.stderr, r.stderr
    assert "width = 32" in r.stderr
    assert "Traceback" not in r.stderr


def test_config_error_is_the_projects_own() -> None:
    from edge_agent.streams import check_source_fits

    class _Src:
        channels = ("pixels_64x64",)
        columns = 4096

    pre = load_card(FP32).preprocessing
    with pytest.raises(ConfigError, match="4096 values per sample"):
        check_source_fits(_Src(), pre, "agent.toml", "s", "m")  # type: ignore[arg-type]


def test_on_site_calibration_fits_one_mean_and_std_for_the_frame() -> None:
    from edge_agent.pipeline.calibration import fit_calibration

    model = load_model(MODELS / "inspection-ae-int8-onnx")
    good, _ = model_samples(24, 120, 32, 32)
    dim = good * np.float32(0.8)  # the line's lighting is dimmer than in training
    cal = fit_calibration(model, dim, stream="station1", now=0.0)
    assert len(cal.mean) == len(cal.std) == 1
    assert cal.n_windows == 120
    assert cal.threshold > 0
    assert cal.mean[0] == pytest.approx(float(dim.mean()), rel=1e-4)
    with pytest.raises(CalibrationError, match=r"expected \(samples, 1024\)"):
        fit_calibration(model, good[:, :100], stream="station1", now=0.0)


def test_calibrating_on_defective_parts_is_flagged() -> None:
    from edge_agent.pipeline.calibration import fit_calibration, threshold_warning

    model = load_model(MODELS / "inspection-ae-int8-onnx")
    good, _ = model_samples(25, 120, 32, 32)
    cal = fit_calibration(model, good, stream="station1", now=0.0)
    assert threshold_warning(cal, model.card) == ""
    mixed, _ = model_samples(25, 120, 32, 32, defect_rate=0.3)  # defects on the belt
    cal = fit_calibration(model, mixed, stream="station1", now=0.0)
    warning = threshold_warning(cal, model.card)
    assert "x the model card's" in warning
    assert "no defective parts" in warning
