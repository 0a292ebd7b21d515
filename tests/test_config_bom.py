"""A config saved with a UTF-8 byte order mark (Windows Notepad) reads like the plain one."""

from __future__ import annotations

from pathlib import Path

from edge_agent.commands.status import resolve_state_dir
from edge_agent.config import load_config
from tests.agentutil import run_cli

BODY = 'device_id = "gw-01"\nstate_dir = "{sd}"\n[mqtt]\nenabled = false\n'


def _write(tmp_path: Path, bom: bool) -> Path:
    p = tmp_path / ("bom.toml" if bom else "plain.toml")
    text = BODY.format(sd=tmp_path / "state").encode()
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text)
    return p


def test_config_with_utf8_bom_loads_like_the_plain_file(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, True)) == load_config(_write(tmp_path, False))


def test_status_finds_the_state_dir_of_a_bom_config(tmp_path: Path) -> None:
    assert resolve_state_dir(None, str(_write(tmp_path, True))) == tmp_path / "state"


def test_config_validate_accepts_a_bom_file(tmp_path: Path) -> None:
    p = run_cli("config", "validate", str(_write(tmp_path, True)))
    assert p.returncode == 0, p.stderr
    assert "OK" in p.stdout
