"""The long-running agent imports only what its configuration uses (issue 15: resident
memory). Each module kept out here is resident memory a gateway does not pay for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_agent.cli import _COMMANDS
from tests.agentutil import run_cli

REPO = Path(__file__).resolve().parent.parent

# Runs `edge-agent <args>` in this interpreter and writes its modules at exit.
WRAPPER = """
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["edge-agent", *sys.argv[2:]]
runpy.run_module("edge_agent", run_name="__main__")
"""


def test_run_without_metrics_or_trust_anchor_leaves_other_commands_http_and_crypto_out(
    tmp_path: Path,
) -> None:
    out = tmp_path / "modules.json"
    p = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(out), "run", "--demo", "--max-windows", "200",
         "--state-dir", str(tmp_path / "state")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    modules = set(json.loads(out.read_text()))
    assert "edge_agent.commands.run" in modules
    assert "edge_agent.pipeline.stream" in modules  # it did run
    others = {f"edge_agent.commands.{c}" for c in _COMMANDS if c != "run"}
    assert not others & modules, sorted(others & modules)
    # metrics are off: no HTTP server; OTA has no trust anchor: no signature code
    heavy = {"http.server", "socketserver", "cryptography", "tuf", "securesystemslib"}
    assert not heavy & modules, sorted(heavy & modules)


def test_every_command_is_still_offered_and_runs_from_its_own_parser() -> None:
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    for c in _COMMANDS:
        assert c.replace("_", "-") in r.stdout, c
    r = run_cli("--log-level", "warning", "support-bundle", "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: edge-agent support-bundle" in r.stdout, r.stdout
    r = run_cli("no-such-command")
    assert r.returncode == 2, r.stderr
    assert "invalid choice: 'no-such-command'" in r.stderr, r.stderr
