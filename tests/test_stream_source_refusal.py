"""A stream whose source cannot be read at start-up is refused naming the config file
and the stream (it said only "nope.csv: cannot read" and exited 1, so with three
streams the operator had to guess which one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.profiles import Profile
from edge_agent.runtime.model import load_model
from edge_agent.sources.replay import Options, ReplaySource
from edge_agent.streams import check_source_fits
from tests.agentutil import MODELS, run_cli


def test_an_unreadable_replay_file_names_the_stream(tmp_path: Path) -> None:
    pre = load_model(MODELS / "vibration-ae-fp32-onnx", Profile(name="t")).card.preprocessing
    src = ReplaySource("press", Options(path=str(tmp_path / "nope.csv")))
    with pytest.raises(ConfigError, match=r"agent\.toml: streams 'press': .*nope\.csv"):
        check_source_fits(src, pre, "agent.toml", "press", "vibration-ae-fp32-onnx")


def test_run_refuses_the_config_with_exit_2_naming_the_stream(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'device_id = "gw"\n[mqtt]\nenabled = false\n'
        '[[streams]]\nname = "spindle"\nmodel = "vibration-ae"\n'
        f'source = {{ kind = "replay", path = "{tmp_path / "gone.csv"}", speed = 0 }}\n'
    )
    r = run_cli("run", "--config", str(cfg), "--state-dir", str(tmp_path / "s"), timeout=120)
    assert r.returncode == 2, r.stderr
    assert "streams 'spindle'" in r.stderr
    assert "gone.csv" in r.stderr
    assert "Traceback" not in r.stderr
