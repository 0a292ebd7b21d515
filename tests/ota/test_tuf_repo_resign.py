"""A root rotation that replaces the targets and online keys leaves the published targets,
snapshot and timestamp signed by the old keys: a device that walks to the new root then
refuses the repository. `edge-ota repo rotate` says so and `edge-ota repo resign` mends
it; checked with the device's real update channel (python-tuf ngclient over HTTP)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from otamodels import REPO, copy_model
from tufrig import Repos, make_repos

from edge_agent.updates.channel import UpdateChannel
from ota.build import plan_bundle
from ota.bundle import write_bundle
from ota.errors import OtaError
from ota.keys import PrivateKey
from ota.tufrepo import RepoKeys, Repository


def _keyfile(tmp: Path, name: str, key: PrivateKey) -> str:
    path = tmp / f"{name}.key"
    path.write_bytes(key.to_pem())
    path.chmod(0o600)
    return str(path)


def _release(repos: Repos, version: int) -> str:
    model = copy_model(repos.tmp / f"model-v{version}", version)
    now = datetime.now(timezone.utc)
    plan = plan_bundle(model, profiles=["x86-generic"], created=now - timedelta(hours=1),
                       expires=now + timedelta(days=30), min_agent_version="0.1.0")  # fmt: skip
    bundle = repos.tmp / f"v{version}.bundle"
    write_bundle(bundle, plan.manifest, plan.sources)  # only its header is read here
    return str(repos.release(bundle))


def _ota(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ota", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip


def test_rotate_warns_and_resign_lets_devices_refresh_under_the_new_root(tmp_path: Path) -> None:
    with make_repos(tmp_path) as repos:
        repos.direct(_release(repos, 2))
        channel = UpdateChannel(repos.channel(), tmp_path / "state")
        assert [t.version for t in channel.refresh()] == [2]

        a, b = repos.image_keys
        c, online2 = PrivateKey.generate(), PrivateKey.generate()
        k = {n: _keyfile(tmp_path, n, key) for n, key in
             {"a": a, "b": b, "c": c, "online2": online2}.items()}  # fmt: skip
        rotate = _ota(
            "repo", "rotate", str(repos.image.path), "--old-key", k["a"], "--old-key", k["b"],
            "--root-key", k["a"], "--root-key", k["c"], "--root-threshold", "2",
            "--targets-key", k["a"], "--targets-key", k["c"], "--targets-threshold", "2",
            "--online-key", k["online2"],
        )  # fmt: skip
        assert rotate.returncode == 0, rotate.stderr
        assert "root v2 written" in rotate.stdout
        assert "targets, snapshot, timestamp still signed by the old keys" in rotate.stderr
        assert "edge-ota repo resign" in rotate.stderr
        assert Repository(repos.image.path).unsigned_under_root() == [
            "targets", "snapshot", "timestamp"
        ]  # fmt: skip

        # The device walks to root v2 and refuses what the old keys signed.
        with pytest.raises(OtaError):
            channel.refresh()

        resign = _ota(
            "repo", "resign", str(repos.image.path), "--key", k["a"], "--key", k["c"],
            "--online-key", k["online2"],
        )  # fmt: skip
        assert resign.returncode == 0, resign.stderr
        assert Repository(repos.image.path).unsigned_under_root() == []
        assert [t.version for t in channel.refresh()] == [2]
        assert channel.root_versions["image"] == 2


def test_resign_with_a_revoked_key_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    with make_repos(tmp_path) as repos:
        a, b = repos.image_keys
        c = PrivateKey.generate()
        keys = RepoKeys([a.public, c.public], 2, [a.public, c.public], 2, repos.image_online.public)
        repos.image.rotate_root(keys, old_signers=[a, b], new_signers=[a, c], now=repos.now)
        before = sorted(p.name for p in repos.image.meta.iterdir())
        with pytest.raises(OtaError, match="targets: not signed by a threshold"):
            repos.image.resign([a, b], repos.image_online, repos.now)  # b is revoked
        assert sorted(p.name for p in repos.image.meta.iterdir()) == before
        assert repos.image.unsigned_under_root() == ["targets"]
