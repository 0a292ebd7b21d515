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


def _modules_of_run(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    p = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(out), "run", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    modules: set[str] = set(json.loads(out.read_text()))
    assert "edge_agent.pipeline.stream" in modules  # it did run
    return modules


def _modules_of_config_run(tmp_path: Path, device_id: str, source: str, sections: str) -> set[str]:
    """_modules_of_run of 100 windows of the demo model's fp32 variant from `source` (a
    TOML inline table), with the agent's other `sections` (TOML text)."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""device_id = "{device_id}"
state_dir = "{tmp_path / "state"}"
models_dir = "{REPO / "models"}"
{sections}
[[streams]]
name = "vib"
model = "vibration-ae"
variant = "fp32-onnx"
source = {source}
"""
    )
    return _modules_of_run(tmp_path, "--config", str(cfg), "--max-windows", "100")


def test_run_without_metrics_or_trust_anchor_leaves_other_commands_http_and_crypto_out(
    tmp_path: Path,
) -> None:
    modules = _modules_of_run(
        tmp_path, "--demo", "--max-windows", "200", "--state-dir", str(tmp_path / "state")
    )
    assert "edge_agent.commands.run" in modules
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


def test_demo_run_keeps_subprocess_and_numpy_ma_out(tmp_path: Path) -> None:
    modules = _modules_of_run(
        tmp_path, "--demo", "--max-windows", "200", "--state-dir", str(tmp_path / "state")
    )
    # the clock check reads adjtimex without ctypes.util (which ran `ldconfig -p`); metrics
    # are off, so no metrics code; numpy.ma (~3 MB) comes with numpy's set functions
    # (np.unique and friends)
    out = {"subprocess", "ctypes.util", "numpy.ma", "tarfile", "edge_agent.service.metrics"}
    assert not out & modules, sorted(out & modules)


def test_replay_source_loads_neither_numpy_ma_nor_numpy_random(tmp_path: Path) -> None:
    import numpy as np

    from edge_agent.sources.synth_signal import CHANNELS, SignalSpec, SyntheticSignal

    signal = tmp_path / "signal.npy"
    np.save(signal, SyntheticSignal(SignalSpec(seed=1, anomalies=False)).render(0, 20_000))
    cols = ", ".join(f'"{c}"' for c in CHANNELS)
    modules = _modules_of_config_run(
        tmp_path,
        "lean-replay",
        f'{{ kind = "replay", path = "{signal}", columns = [{cols}], '
        "rate_hz = 100.0, speed = 50.0 }",
        "[ota]\nenabled = false",
    )
    assert "edge_agent.sources.replay" in modules
    # the synthetic generator's noise needs numpy.random; a file does not (~3 MB each)
    out = {"numpy.ma", "numpy.random", "edge_agent.sources.synthetic", "subprocess"}
    assert not out & modules, sorted(out & modules)


def test_announcement_root_keeps_update_steps_out_until_an_update_runs(tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from ota.keys import PrivateKey
    from ota.root import Root, SignedRoot

    keys = [PrivateKey.generate() for _ in range(2)]
    expires = datetime.now(timezone.utc) + timedelta(days=365)
    doc = SignedRoot(Root(version=1, expires=expires, threshold=2,
                          keys={k.keyid: k.public for k in keys}))  # fmt: skip
    for k in keys:
        doc = doc.sign(k)
    root = tmp_path / "root.json"
    root.write_bytes(doc.to_bytes())
    modules = _modules_of_config_run(
        tmp_path,
        "lean-ota",
        '{ kind = "synthetic", speed = 50.0 }',
        f'[mqtt]\nhost = "127.0.0.1"\nport = 9\n[ota]\nroot_file = "{root}"',
    )
    assert "edge_agent.updates.updater" in modules  # the updater waits for announcements
    # the shadow run, the calibration carried over, the bundle reader and unpacker
    # (tarfile), the channel's install path: loaded when an update reaches them;
    # signatures are checked in a child (edge_agent.updates.trust_worker); urllib.request
    # (with http.client, email, ssl) when a download starts, and not for paho on a plain
    # TCP broker (edge_agent.reporting.paho_lean)
    out = {
        "edge_agent.updates.shadow", "edge_agent.updates.calib_carry",
        "edge_agent.updates.directed", "ota.bundle", "ota.unpack", "tarfile",
        "cryptography", "tuf", "securesystemslib", "numpy.ma",
        "urllib.request", "http.client", "email", "ssl",
    }  # fmt: skip
    assert not out & modules, sorted(out & modules)


def test_mqtt_disabled_keeps_paho_ssl_and_email_out(tmp_path: Path) -> None:
    modules = _modules_of_config_run(
        tmp_path,
        "lean-offline",
        '{ kind = "synthetic", speed = 50.0 }',
        "[mqtt]\nenabled = false\n[ota]\nenabled = false",
    )
    assert "edge_agent.reporting.outbox" in modules  # records are still kept
    # paho imports ssl, urllib.request (http.client, email) at its top: ~8 MB resident
    out = {
        "paho", "ssl", "email", "urllib.request", "http.client",
        "edge_agent.reporting.link", "edge_agent.reporting.drain",
    }  # fmt: skip
    assert not out & modules, sorted(out & modules)
