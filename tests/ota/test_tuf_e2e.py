"""End to end on the TUF channel: the operator makes keys, an image and a director
repository, releases and directs with the real `edge-ota` CLI; `edge-ota serve` serves
both over HTTP; the device is a real `edge-agent run` with a real mosquitto. The agent
shadows, promotes and commits v2; then the director sends the group back to the
previous model's weights as a new version (v3), a hint makes the device refresh at
once, and it goes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet import ota_cli, read_status, start_agent, stop_agent, wait_until, write_config
from otamodels import REPO, copy_model

from edge_agent.updates.updater import PAUSE_ENV, PAUSE_STEPS
from tests.agentutil import run_cli
from tests.mosquitto import Broker
from tests.subscriber import Subscriber

pytestmark = pytest.mark.broker

HAPPY = ["announced", "downloading", "verifying", "validating", "shadow", "promoted", "committed"]


def serve(d: Path) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "ota", "serve", str(d), "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()
    assert " at http://" in line, line
    return p, line.rsplit(" at ", 1)[1].strip().rstrip("/")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    keys = tmp_path / "keys"
    for name in ("alice", "bob", "online", "director-root", "director-online"):
        ota_cli("keygen", "--out", str(keys), "--name", name)
    k = {n: str(keys / f"{n}.key") for n in ("alice", "bob", "online")}
    image, director = tmp_path / "image", tmp_path / "director"
    ota_cli(
        "repo", "init", str(image), "--kind", "image", "--root-key", k["alice"],
        "--root-key", k["bob"], "--root-threshold", "2", "--targets-key", k["alice"],
        "--targets-key", k["bob"], "--targets-threshold", "2", "--online-key", k["online"],
    )  # fmt: skip
    ota_cli(
        "repo", "init", str(director), "--kind", "director", "--root-key",
        str(keys / "director-root.key"), "--online-key", str(keys / "director-online.key"),
    )  # fmt: skip
    servers = [serve(image), serve(director)]
    try:
        yield {
            "tmp": tmp_path, "keys": keys, "k": k, "image": image, "director": director,
            "image_url": servers[0][1], "director_url": servers[1][1],
        }  # fmt: skip
    finally:
        for p, _ in servers:
            p.terminate()
            p.communicate(timeout=10)


def release(site: dict[str, Any], version: int) -> str:
    model = copy_model(site["tmp"] / f"model-v{version}", version)
    bundle = site["tmp"] / f"vib-v{version}.bundle"
    ota_cli("build", str(model), "--profiles", "x86-generic", "--expires", "30d",
            "--out", str(bundle))  # fmt: skip
    out = ota_cli(
        "repo", "add", str(site["image"]), str(bundle), "--key", site["k"]["alice"],
        "--key", site["k"]["bob"], "--online-key", site["k"]["online"],
    ).stdout  # fmt: skip
    target: str = json.loads(out)["target"]
    return target


def direct(site: dict[str, Any], target: str) -> None:
    ota_cli(
        "director", "set", str(site["director"]), "--image", str(site["image"]),
        "--target", target, "--group", "line-1",
        "--online-key", str(site["keys"] / "director-online.key"),
    )  # fmt: skip


def serving(state_dir: Path) -> tuple[Any, Any]:
    st = read_status(state_dir)
    streams = st.get("streams") or [{}]
    return (st.get("ota") or {}).get("phase"), streams[0].get("model", {}).get("version")


def test_director_moves_a_group_forward_and_back_by_a_new_version(
    broker: Broker, site: dict[str, Any], tmp_path: Path
) -> None:
    direct(site, release(site, 2))
    extra = "\n".join([
        f'image_url = "{site["image_url"]}"',
        f'director_url = "{site["director_url"]}"',
        f'image_root_file = "{site["image"] / "metadata" / "1.root.json"}"',
        f'director_root_file = "{site["director"] / "metadata" / "1.root.json"}"',
        "refresh_s = 3600",
    ])  # fmt: skip
    cfg = write_config(tmp_path, "gw-01", broker.port, None, extra_ota=extra)
    state_dir = tmp_path / "gw-01"
    sub = Subscriber(broker.host, broker.port, "edge/gw-01/ota/state")
    agent = start_agent(cfg)
    try:
        wait_until(lambda: serving(state_dir) == ("committed", 2), 90, "v2 committed", agent)
        msgs = [m.json() for m in sub.on("ota/state")]
        assert [m["state"] for m in msgs] == HAPPY, msgs
        ota = read_status(state_dir)["ota"]
        assert ota["channel"]["trusted_root_versions"] == {"image": 1, "director": 1}
        # Back to the previous weights: a new version, directed, and a hint (no trust).
        target = release(site, 3)
        direct(site, target)
        t0 = time.monotonic()
        ota_cli("hint", "--host", broker.host, "--port", str(broker.port), "--group", "line-1")
        wait_until(lambda: serving(state_dir) == ("committed", 3), 90, "v3 committed", agent)
        took = time.monotonic() - t0
        msgs = [m.json() for m in sub.on("ota/state")]
        assert [m["state"] for m in msgs][-7:] == HAPPY, msgs
        assert all(m["version"] == 3 for m in msgs[-7:])
        print(f"director change to serving v3: {took:.1f} s")
    finally:
        out = stop_agent(agent)
        sub.close()
    assert "Traceback" not in out, out


def _channel_config(site: dict[str, Any], tmp_path: Path, device: str, port: int) -> Path:
    extra = "\n".join([
        f'image_url = "{site["image_url"]}"',
        f'director_url = "{site["director_url"]}"',
        f'image_root_file = "{site["image"] / "metadata" / "1.root.json"}"',
        f'director_root_file = "{site["director"] / "metadata" / "1.root.json"}"',
    ])  # fmt: skip
    return write_config(tmp_path, device, port, None, extra_ota=extra)


@pytest.mark.slow
def test_sigkill_at_every_step_of_a_directed_update_restarts_onto_a_verified_model(
    broker: Broker, site: dict[str, Any], tmp_path: Path
) -> None:
    direct(site, release(site, 2))
    for step in PAUSE_STEPS:
        device = f"gw-{step}"
        cfg = _channel_config(site, tmp_path, device, broker.port)
        state_dir = tmp_path / device
        agent = start_agent(cfg, {PAUSE_ENV: step})
        marker = state_dir / "ota" / f"paused-at-{step}"
        try:
            wait_until(marker.exists, 60, f"pause at {step}", agent)
        finally:
            agent.kill()  # SIGKILL: no clean-up of any kind
            agent.communicate(timeout=10)
        agent = start_agent(cfg)  # without the fault: recovery, then the channel again
        try:
            wait_until(
                lambda sd=state_dir: serving(sd) == ("committed", 2), 60, f"v2 after {step}", agent
            )
        finally:
            out = stop_agent(agent)
        assert "Traceback" not in out, (step, out)
        p = run_cli("models", "--state-dir", str(state_dir), "--json")
        m = json.loads(p.stdout)
        active = next(s for s in m["slots"] if s["role"] == "active")
        assert (active["version"], active["intact"], m["committed"]) == (2, True, True), step
        assert not any((state_dir / "ota" / "downloads").glob("*.bundle")), step


def test_python_tuf_is_not_imported_without_a_channel() -> None:
    """Devices without the channel (or with OTA off) do not pay python-tuf's memory."""
    code = (
        "import sys, edge_agent.agent, edge_agent.updates.ota_runtime, "
        "edge_agent.updates.updater, ota.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tuf', 'securesystemslib')))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert p.stdout.strip() == "[]", p.stdout
