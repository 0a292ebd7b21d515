"""Review of issue 18: `edge-agent config validate` must refuse a `[serving]` the
agent then refuses to start with. README: validate "refuses, with the key and the
reason, what the agent could not run (... a missing file or credential)". A missing
token_file, one holding a token under 16 characters, and a socket in a directory
that does not exist all validated "OK", and `edge-agent run` then stopped at start
(exit 1: "[serving] token_file ...: No such file or directory", "... needs a token
of at least 16 characters", "cannot listen on ...: No such file or directory")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agentutil import run_cli

STREAM = '[[streams]]\nname = "s"\nsource = {kind = "synthetic"}\n'


def _cfg(tmp_path: Path, serving: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw"\nstate_dir = "{tmp_path / "state"}"\n[mqtt]\nenabled = false\n'
        f"[serving]\nenabled = true\n{serving}\n{STREAM}"
    )
    return cfg


@pytest.mark.parametrize("what", ["missing token file", "short token", "socket dir missing"])
def test_validate_refuses_a_serving_section_run_would_refuse(tmp_path: Path, what: str) -> None:
    short = tmp_path / "short.token"
    short.write_text("short\n")
    serving = {
        "missing token file": f'token_file = "{tmp_path / "nope.token"}"',
        "short token": f'token_file = "{short}"',
        "socket dir missing": f'socket = "{tmp_path / "no-such-dir" / "infer.sock"}"',
    }[what]
    cfg = _cfg(tmp_path, serving)
    v = run_cli("config", "validate", str(cfg))
    assert v.returncode == 2, (what, v.stdout, v.stderr)
    assert "serving" in v.stderr
