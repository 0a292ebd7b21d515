"""An operator's side for end-to-end OTA tests, made with the real CLI (`python -m ota`):
keys, a signed root, a signed bundle of a real model; and a device agent config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from otamodels import REPO, copy_model

from edge_agent.updates.store import SlotStore
from ota.bundle import read_header
from ota.root import Root
from ota.verify import verify

PROFILE = "x86-generic"


def ota_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "ota", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p


@dataclass(frozen=True)
class Fleet:
    root: Path
    bundle: Path


def make_fleet(d: Path, version: int = 2) -> Fleet:
    keys = d / "keys"
    for name in ("alice", "bob"):
        ota_cli("keygen", "--out", str(keys), "--name", name)
    root = d / "root.json"
    ota_cli(
        "root", "init", "--key", str(keys / "alice.pub"), "--key", str(keys / "bob.pub"),
        "--threshold", "2", "--expires", "30d", "--out", str(root),
    )  # fmt: skip
    ota_cli(
        "root", "sign", str(root), "--key", str(keys / "alice.key"), "--key", str(keys / "bob.key")
    )
    model = copy_model(d / f"model-v{version}", version)
    bundle = d / f"vib-v{version}.bundle"
    ota_cli(
        "build", str(model), "--profiles", PROFILE, "rpi5", "--expires", "30d", "--out", str(bundle)
    )
    ota_cli("sign", str(bundle), "--key", str(keys / "alice.key"), "--key", str(keys / "bob.key"))
    return Fleet(root, bundle)


def write_config(
    d: Path,
    device: str,
    port: int,
    root: Path | None,
    *,
    shadow: int = 40,
    trial: int = 60,
    local_dir: Path | None = None,
    extra_ota: str = "",
) -> Path:
    cfg = d / f"{device}.toml"
    cfg.write_text(
        f"""device_id = "{device}"
state_dir = "{d / device}"
profile = "{PROFILE}"
models_dir = "{REPO / "models"}"
[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[ota]
group = "line-1"
root_file = "{root or ""}"
shadow_windows = {shadow}
trial_windows = {trial}
local_bundle_dir = "{local_dir or ""}"
{extra_ota}
[health]
watchdog = false
[[streams]]
name = "vib"
model = "vibration-ae"
variant = "fp32-onnx"
source = {{ kind = "synthetic", speed = 20.0 }}
"""
    )
    return cfg


def start_agent(cfg: Path, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_OTA_PAUSE_AT"}
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def stop_agent(p: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    if p.poll() is None:
        p.send_signal(sig)
    out, _ = p.communicate(timeout=20)
    return out


def read_status(state_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


def wait_until(
    pred: Any, timeout: float, what: str, proc: subprocess.Popen[str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"agent exited while waiting for {what}: {proc.communicate()[0]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def install_committed(
    store: SlotStore, bundle: Path, root: Root, profile: str, now: datetime
) -> None:
    """Put a verified bundle into the slots as an update that completed: the first one
    installed directly, later ones through claim, unpack, validate, promote, commit."""
    h = read_header(bundle)
    vm = verify(h.manifest_bytes, h.signatures, root, -1, profile, now)
    if store.state.active is None:
        store.install_initial(bundle, vm, now)
        return
    store.begin_update(vm.manifest.version, now)
    store.install_candidate(bundle, vm, now)
    store.mark_validated(now)
    store.promote(now)
    store.commit(now)
