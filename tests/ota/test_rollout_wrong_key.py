"""`edge-ota rollout start` with a key that is not the director's must change nothing.

Found by trying it with real agents: `rollout start --online-key keys/online.key` (the
image repository's online key, an easy slip) planned the rollout, persisted it as
`running` with wave 1 `directing`, and only then failed to sign the director
(`SignatureError: targets: not signed by a threshold of its keys`, exit 1). The group then
had a rollout that no driver runs: a second `start` is refused ("has rollout ... running:
abort it"), and `abort` with the same wrong key fails the same way after moving the state
to `aborting`. A refused start should leave no rollout behind, like the other refusals
(an unknown target, --min-devices, a group already directed).

Real parts: TUF repositories made by the project's code, a real mosquitto holding the
retained state two devices would publish, and the real `edge-ota` CLI in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from otamodels import copy_model
from tufrig import make_repos

from ota.broker_args import MqttTarget
from ota.build import plan_bundle
from ota.bundle import write_bundle
from ota.publish import publish_retained
from ota.rollout_store import RolloutStore, default_state_dir
from tests.agentutil import REPO
from tests.mosquitto import Broker

pytestmark = [pytest.mark.broker]

FAM = "vibration-ae"


def _bundle(tmp: Path, version: int) -> Path:
    from datetime import datetime, timedelta, timezone

    model = copy_model(tmp / f"m{version}", version)
    now = datetime.now(timezone.utc)
    p = plan_bundle(model, profiles=["x86-generic"], created=now,
                    expires=now + timedelta(days=3), min_agent_version="0.1.0")  # fmt: skip
    out = tmp / f"v{version}.bundle"
    write_bundle(out, p.manifest, p.sources)
    return out


def _device_state(dev: str) -> list[tuple[str, bytes]]:
    import time

    def msg(section: str, body: dict[str, object]) -> tuple[str, bytes]:
        doc = {"v": 1, "device": dev, "seq": 1, "ts": time.time(), **body}
        return f"edge/{dev}/{section}", json.dumps(doc).encode()

    return [
        msg("status", {"state": "online"}),
        msg("state/health", {"group": "line-1", "verdict": "OK", "reasons": []}),
        msg("state/models", {"streams": [{"stream": "line", "family": FAM, "model": "m",
                                          "version": 1, "slot": "bundled",
                                          "calibration": "none"}]}),
        msg("state/ota", {"phase": "idle", "target": None, "last_result": ""}),
    ]  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ota", *args], check=False, cwd=REPO, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_a_start_with_a_key_that_is_not_the_directors_leaves_no_rollout(
    tmp_path: Path, broker: Broker
) -> None:
    with make_repos(tmp_path) as repos:
        v1 = repos.release(_bundle(tmp_path, 1))
        v2 = repos.release(_bundle(tmp_path, 2))
        repos.direct(v1, groups=["line-1"])
        publish_retained(
            MqttTarget(broker.host, broker.port), _device_state("gw-1") + _device_state("gw-2")
        )
        wrong = _cli("keygen", "--out", str(tmp_path / "keys"), "--name", "not-director")
        assert wrong.returncode == 0, wrong.stderr
        timestamp = (repos.director.meta / "timestamp.json").read_bytes()

        p = _cli(
            "rollout", "start", "--director", str(tmp_path / "director"),
            "--image", str(tmp_path / "image"),
            "--online-key", str(tmp_path / "keys" / "not-director.key"),
            "--group", "line-1", "--target", v2, "--waves", "1,100%",
            "--host", broker.host, "--port", str(broker.port), "--poll", "1s",
        )  # fmt: skip

        assert p.returncode != 0, p.stdout + p.stderr
        assert (repos.director.meta / "timestamp.json").read_bytes() == timestamp
        left = RolloutStore(default_state_dir(tmp_path / "director")).load("line-1")
        assert left is None, (
            f"a refused start left rollout {left.id} {left.state.value} behind: "
            f"{p.stdout}{p.stderr}"
        )
