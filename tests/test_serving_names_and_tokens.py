"""Two things clients get wrong and the endpoint must not: a percent-encoded model name
(what URL-quoting client libraries send) addresses the model, and a token that is not
printable ASCII is refused when the agent starts, not silently never matched. A real
endpoint on loopback TCP with the bundled models."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.errors import ServingError
from edge_agent.serving.checks import read_token
from tests.serving_inprocess import running_endpoint

TOKEN = "names-and-tokens-0123456789"


def _get(port: int, target: str) -> tuple[int, dict[str, object]]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", target, headers={"Authorization": f"Bearer {TOKEN}"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def test_a_percent_encoded_model_name_addresses_the_model(tmp_path: Path) -> None:
    with running_endpoint(tmp_path, TOKEN) as ep:
        plain = _get(ep.port, "/v2/models/vibration-ae")
        quoted = _get(ep.port, "/v2/models/vibration%2Dae")
        assert plain[0] == 200
        assert quoted == plain
        status, body = _get(ep.port, "/v2/models/vibration%2Dnope")
        assert status == 404
        assert "vibration-nope" in str(body["error"])  # said decoded, as the client meant it


@pytest.mark.parametrize("token", ["ünïcode-token-0123456789", "has a space in it 0123456789"])
def test_a_token_that_is_not_printable_ascii_is_refused(tmp_path: Path, token: str) -> None:
    p = tmp_path / "token"
    p.write_text(token + "\n", encoding="utf-8")
    with pytest.raises(ServingError, match="printable ASCII"):
        read_token(str(p))


def test_config_validate_names_a_non_ascii_token(tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("ünïcode-token-0123456789\n", encoding="utf-8")
    tok.chmod(0o640)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'device_id = "gw-tok"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[serving]\nenabled = true\nport = 18779\ntoken_file = "{tok}"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "edge_agent", "config", "validate", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "printable ASCII" in r.stderr
