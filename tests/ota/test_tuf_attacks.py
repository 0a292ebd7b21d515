"""The TUF/Uptane threat model against the device's update channel: real image and
director repositories (python-tuf Metadata API, `ota.tufrepo`) served over real HTTP,
python-tuf's ngclient on the device, the real updater, slot store and model.

Each test first has v2 installed through the channel, then attacks, and asserts the
specific error AND that the serving slot's files are byte-identical afterwards."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from conftest import Env
from otamodels import copy_model
from rig import Rig, make_bundle, make_rig
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tufrig import Repos, make_repos

from edge_agent.updates.channel import UpdateChannel
from ota.fetch import FetchLimits
from ota.keys import PrivateKey
from ota.serve import BundleServer, DirectoryRequestHandler, _Server
from ota.tufrepo import RepoKeys, sslib_key


@dataclass
class Site:
    env: Env
    repos: Repos
    rig: Rig
    v2_path: str = ""

    def bundle(self, version: int) -> Path:
        d = copy_model(self.env.tmp / f"model-v{version}", version)
        return make_bundle(self.env, d, f"vib-v{version}.bundle")

    def slot_files(self) -> dict[str, bytes]:
        root = self.env.tmp / "state" / "slots"
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def check(self) -> str:
        return self.rig.updater.check_channel()

    @property
    def note(self) -> str:
        return self.rig.updater.channel_note

    def serving(self) -> int:
        return self.rig.pipeline.model.card.version


@pytest.fixture
def site(env: Env) -> Iterator[Site]:
    with make_repos(env.tmp / "repos") as repos:
        channel = UpdateChannel(repos.channel(), env.tmp / "state")
        with make_rig(env, channel=channel) as rig:
            s = Site(env, repos, rig)
            s.v2_path = s.repos.release(s.bundle(2))
            s.repos.direct(s.v2_path)
            assert s.check() == "committed", rig.published[-1]
            assert s.serving() == 2
            yield s


def _published_targets(repos: Repos) -> tuple[str, Path]:
    """The newest target's path in the image repository and its file on the server."""
    tf = max(repos.image.targets().signed.targets.values(), key=lambda t: t.path)
    name = tf.path.split("/")[-1]
    return tf.path, next((repos.image.path / "targets").rglob(f"*.{name}"))


def test_arbitrary_software_is_refused(site: Site) -> None:
    """The web server swaps the released bundle's bytes: ngclient checks the hash."""
    before = site.slot_files()
    path = site.repos.release(site.bundle(3))
    site.repos.direct(path)
    _, served = _published_targets(site.repos)
    evil = bytearray(served.read_bytes())
    evil[-2000] ^= 0xFF
    served.write_bytes(bytes(evil))
    assert site.check() == "failed"
    assert "HashMismatchError" in site.rig.published[-1]["detail"]
    assert site.slot_files() == before
    assert site.serving() == 2


def test_rollback_attack_with_old_timestamp_is_refused(site: Site) -> None:
    before = site.slot_files()
    old_ts = (site.repos.image.meta / "timestamp.json").read_bytes()
    site.repos.image.refresh_timestamp(site.repos.image_online, site.repos.now)
    assert site.check() == "idle"  # the device has seen the newer timestamp
    (site.repos.image.meta / "timestamp.json").write_bytes(old_ts)
    assert site.check() == "rejected"
    assert site.note.startswith("RollbackError: image repository")
    assert site.slot_files() == before


def test_indefinite_freeze_reports_a_stale_channel_and_keeps_serving(site: Site) -> None:
    before = site.slot_files()
    site.repos.image.refresh_timestamp(
        site.repos.image_online, site.repos.now - timedelta(days=2)
    )  # expired a day ago: the repository stopped vouching for its state
    assert site.check() == "stale"
    assert site.note.startswith("update channel stale since ")
    expired = site.repos.image.timestamp().signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[union-attr]
    assert expired in site.note
    assert site.rig.published[-1]["state"] == "stale"
    assert site.rig.updater.snapshot()["channel"]["note"] == site.note
    assert site.slot_files() == before
    assert site.serving() == 2


def test_endless_data_is_cut_at_the_signed_length(site: Site) -> None:
    before = site.slot_files()
    site.repos.direct(site.repos.release(site.bundle(3)))
    _, served = _published_targets(site.repos)
    with served.open("ab") as f:
        f.write(b"\0" * 1_000_000)
    assert site.check() == "failed"
    assert "SizeLimitError" in site.rig.published[-1]["detail"]
    assert site.slot_files() == before


def test_endless_metadata_is_cut_at_its_limit(site: Site) -> None:
    before = site.slot_files()
    ts = site.repos.image.meta / "timestamp.json"
    ts.write_bytes(ts.read_bytes()[:-1] + b" " * 100_000 + b"}")
    assert site.check() == "rejected"
    assert site.note.startswith("SizeLimitError: image repository")
    assert site.slot_files() == before


class _TrickleTargets(DirectoryRequestHandler):
    """Metadata at full speed; target files 1000 bytes, then a byte every 0.3 s."""

    def _send_body(self, f: BinaryIO, length: int) -> None:
        if not self.path.startswith("/targets/"):
            super()._send_body(f, length)
            return
        self.wfile.write(f.read(1000))
        self.wfile.flush()
        for _ in range(200):
            time.sleep(0.3)
            self.wfile.write(f.read(1))
            self.wfile.flush()


def test_slow_retrieval_is_given_up(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        slow = BundleServer(
            _Server(("127.0.0.1", 0), type("H", (_TrickleTargets,), {"root": repos.image.path}))
        )
        try:
            cfg = repos.channel(limits=FetchLimits(min_rate_bps=5000, rate_window_s=1, base_s=5))
            cfg = type(cfg)(**{**cfg.__dict__, "image_url": slow.url("").rstrip("/")})
            with make_rig(env, channel=UpdateChannel(cfg, env.tmp / "state")) as rig:
                d = copy_model(env.tmp / "m3", 3)
                repos.direct(repos.release(make_bundle(env, d, "v3.b")))
                assert rig.updater.check_channel() == "failed"
                assert "TransferTooSlowError" in rig.published[-1]["detail"]
                assert not (env.tmp / "state" / "slots").exists()
                assert rig.pipeline.model.card.version == 1
        finally:
            slow.close()


def _publish_raw_targets(
    repo: Any, targets: Metadata[Targets], signers: list[PrivateKey], online: PrivateKey
) -> None:
    """What an attacker holding `signers` (and the online key) can publish: no threshold
    check on this side."""
    from ota.tufrepo import _sign, _write

    targets.signed.version += 1
    targets.signed.expires = datetime.now(timezone.utc) + timedelta(days=30)
    targets.signatures.clear()
    _sign(targets, signers)
    _write(repo.meta / f"{targets.signed.version}.targets.json", targets)
    later = datetime.now(timezone.utc) + timedelta(days=1)
    snap_v = repo.snapshot().signed.version + 1
    snap = Metadata(
        Snapshot(
            version=snap_v, expires=later, meta={"targets.json": MetaFile(targets.signed.version)}
        )
    )
    _sign(snap, [online])
    _write(repo.meta / f"{snap_v}.snapshot.json", snap)
    ts = Metadata(
        Timestamp(
            version=repo.timestamp().signed.version + 1,
            expires=later,
            snapshot_meta=MetaFile(snap_v),
        )
    )
    _sign(ts, [online])
    _write(repo.meta / "timestamp.json", ts)


def test_mix_and_match_director_hash_differs_from_image(site: Site) -> None:
    before = site.slot_files()
    path = site.repos.release(site.bundle(3))
    site.repos.direct(path)
    md = site.repos.director.targets()
    tf = md.signed.targets[path]
    md.signed.targets[path] = TargetFile(
        tf.length, {"sha256": "ab" * 32}, path, tf.unrecognized_fields
    )
    site.repos.director.publish_targets(
        md, [site.repos.director_online], site.repos.director_online, site.repos.now
    )
    assert site.check() == "rejected"
    assert site.note.startswith("TargetMismatchError: the director's")
    assert site.slot_files() == before


def test_mixed_bundle_of_repository_states_is_refused(site: Site) -> None:
    """Files from two repository states served together: the targets file named by the
    current snapshot holds an older version."""
    before = site.slot_files()
    site.repos.release(site.bundle(3))
    meta = site.repos.image.meta
    newest = max(int(p.name.split(".")[0]) for p in meta.glob("*.targets.json"))
    shutil.copyfile(meta / f"{newest - 1}.targets.json", meta / f"{newest}.targets.json")
    assert site.check() == "rejected"
    assert site.note.startswith("RollbackError: image repository: metadata rolled back or mixed")
    assert site.slot_files() == before


def test_compromised_director_key_alone_cannot_install_an_unreleased_bundle(site: Site) -> None:
    before = site.slot_files()
    evil = site.bundle(9)  # never released in the image repository
    md = site.repos.director.targets()
    path = "vib-ae/evil-v9.bundle"
    tf = TargetFile.from_file(path, str(evil), ["sha256"])
    tf.unrecognized_fields["custom"] = {
        "edge": {"name": "vibration-ae-fp32-onnx", "family": "vibration-ae", "version": 9,
                 "groups": ["line-1"], "devices": []}
    }  # fmt: skip
    md.signed.targets = {path: tf}
    site.repos.director.publish_targets(
        md, [site.repos.director_online], site.repos.director_online, site.repos.now
    )
    assert site.check() == "rejected"
    assert site.note.startswith("TargetMismatchError: the director names vib-ae/evil-v9.bundle")
    assert "image repository does not list" in site.note
    assert site.slot_files() == before


def test_compromised_image_key_below_threshold_cannot_release(site: Site) -> None:
    before = site.slot_files()
    evil = site.bundle(3)
    md = site.repos.image.targets()
    tf = TargetFile.from_file("vib-ae/vib-ae-v3.bundle", str(evil), ["sha256"])
    md.signed.targets[tf.path] = tf
    _publish_raw_targets(site.repos.image, md, [site.repos.image_keys[0]], site.repos.image_online)
    assert site.check() == "rejected"
    assert site.note.startswith("ThresholdError: image repository")
    assert site.slot_files() == before


def test_key_rotation_revokes_the_old_key(site: Site) -> None:
    a, b = site.repos.image_keys
    c = PrivateKey.generate()
    image = site.repos.image
    keys = RepoKeys(
        [a.public, c.public], 2, [a.public, c.public], 2, site.repos.image_online.public
    )
    assert image.rotate_root(keys, old_signers=[a, b], new_signers=[a, c], now=site.repos.now) == 2
    site.repos.image_keys = [a, c]
    site.repos.direct(site.repos.release(site.bundle(3)))
    assert site.check() == "committed"
    assert site.rig.updater.channel.root_versions["image"] == 2  # type: ignore[union-attr]
    persisted = Metadata.from_file(str(site.env.tmp / "state/ota/tuf/image/root.json"))
    assert persisted.signed.version == 2  # the walked chain survives restarts
    # The revoked key b (with a stolen online key) cannot release anything any more.
    before = site.slot_files()
    md = image.targets()
    tf = TargetFile.from_file("vib-ae/vib-ae-v4.bundle", str(site.bundle(4)), ["sha256"])
    md.signed.targets[tf.path] = tf
    _publish_raw_targets(image, md, [b], site.repos.image_online)
    assert site.check() == "rejected"
    assert site.note.startswith("SignatureError: image repository")
    assert site.slot_files() == before
    assert sslib_key(b.public).keyid not in persisted.signed.keys


def test_wrong_device_or_group_is_not_directed(site: Site) -> None:
    before = site.slot_files()
    path = site.repos.release(site.bundle(3))
    site.repos.direct(path, groups=("line-2",), devices=("gw-02",))
    md = site.repos.director.targets()
    assert "line-1" not in str(md.signed.targets[path].unrecognized_fields)
    # line-1 still points at v2, which this device runs: nothing to do
    assert site.check() == "idle"
    site.repos.direct(path, groups=("line-1",))  # now line-1 goes too
    md = site.repos.director.targets()
    # remove line-1 from every entry by hand: nothing left for gw-01
    for t in md.signed.targets.values():
        t.unrecognized_fields["custom"]["edge"]["groups"] = ["line-2"]
    site.repos.director.publish_targets(
        md, [site.repos.director_online], site.repos.director_online, site.repos.now
    )
    published = len(site.rig.published)
    assert site.check() == "idle"
    assert site.note.startswith("the director names no target for device 'gw-01' or group 'line-1'")
    assert len(site.rig.published) == published
    assert site.slot_files() == before
    assert site.serving() == 2


def test_director_returns_a_group_to_old_weights_by_a_new_version(site: Site) -> None:
    site.repos.direct(site.repos.release(site.bundle(3)))
    assert site.check() == "committed"
    assert site.serving() == 3
    # Pointing back at v2 is a rollback: refused, v3 keeps serving.
    site.repos.direct(site.v2_path)
    before = site.slot_files()
    assert site.check() == "rejected"
    assert "RollbackError" in site.rig.published[-1]["detail"]
    # the retained summary (state/ota, the fleet view, a rollout) says why, not only the event
    assert site.rig.updater.snapshot()["last_result"].startswith("rejected v2: RollbackError")
    assert site.slot_files() == before
    # The old weights as v4: that goes.
    site.repos.direct(site.repos.release(site.bundle(4)))
    assert site.check() == "committed"
    assert site.serving() == 4
