"""A damaged trusted root on the device (`<state_dir>/ota/tuf/<repo>/root.json`, the
root ngclient persisted after walking the chain) is local damage, not a refusal by the
server: the device says so, naming the file and the fix, in the refresh outcome, in
status and on `ota/state`, and keeps serving. It re-seeds from the installed root file
only when that file is at least the newest root this device is known to have trusted
(`root_history/N.root.json`): re-seeding from an older one would forget a rotation and
with it the keys that rotation revoked. Real repositories over real HTTP (tufrig),
ngclient, the real updater, slot store and start-up check."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Env
from otamodels import copy_model
from rig import Rig, make_bundle, make_rig
from tufrig import Repos, make_repos

from edge_agent.updates.boot import SlotBoot
from edge_agent.updates.channel import UpdateChannel
from edge_agent.updates.seal import SealTrust
from ota.keys import PrivateKey
from ota.tufrepo import RepoKeys


@dataclass
class Device:
    env: Env
    repos: Repos
    rig: Rig

    @property
    def meta(self) -> Path:
        return self.env.tmp / "state" / "ota" / "tuf" / "image"

    def slot_files(self) -> dict[str, bytes]:
        root = self.env.tmp / "state" / "slots"
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def release(self, version: int) -> str:
        d = copy_model(self.env.tmp / f"model-v{version}", version)
        return self.repos.release(make_bundle(self.env, d, f"vib-v{version}.bundle"))

    def rotate_image_root(self) -> None:
        """Image root v2: key b revoked (c in its place); the device walks to it."""
        a, b = self.repos.image_keys
        c = PrivateKey.generate()
        keys = RepoKeys(
            [a.public, c.public], 2, [a.public, c.public], 2, self.repos.image_online.public
        )
        now = self.repos.now
        rotated = self.repos.image.rotate_root(
            keys, old_signers=[a, b], new_signers=[a, c], now=now
        )
        assert rotated == 2
        self.repos.image_keys = [a, c]


@pytest.fixture
def device(env: Env) -> Iterator[Device]:
    with make_repos(env.tmp / "repos") as repos:
        channel = UpdateChannel(repos.channel(), env.tmp / "state")
        with make_rig(env, channel=channel) as rig:
            d = Device(env, repos, rig)
            repos.direct(d.release(2))
            assert rig.updater.check_channel() == "committed", rig.published[-1]
            yield d


def _truncate(path: Path) -> None:
    """Cut the file in half (a power cut, a full disk), following the link ngclient
    makes (root.json -> root_history/N.root.json): the stored root N is damaged."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_damaged_rotated_root_is_a_local_error_naming_the_file_and_the_fix(
    device: Device,
) -> None:
    rig = device.rig
    device.rotate_image_root()
    device.repos.direct(device.release(3))
    assert rig.updater.check_channel() == "committed", rig.published[-1]
    assert (device.meta / "root_history" / "2.root.json").is_file()
    before = device.slot_files()
    _truncate(device.meta / "root.json")
    device.repos.direct(device.release(4))
    assert rig.updater.check_channel() == "rejected"
    note = rig.updater.channel_note
    assert note.startswith("TrustStoreError: image repository: the trusted root stored at ")
    assert str(device.meta / "root.json") in note
    assert "is unreadable" in note
    assert "not a refusal by the server" in note
    # not re-seeded from the installed v1: that would forget the revocation of key b
    assert f"not re-seeded from the installed root file {device.repos.image.meta}" in note
    assert "1.root.json (v1, ota.image_root_file)" in note
    assert "this device had accepted root v2" in note
    assert "root_history/2.root.json" in note  # what to restore
    assert "metadata refused" not in note
    # said in status and on ota/state (public: the state dir is not revealed there)
    assert rig.updater.snapshot()["channel"]["note"] == note
    published = rig.published[-1]
    assert (published["state"], published["version"]) == ("rejected", None)
    assert "TrustStoreError" in published["detail"]
    assert "<state_dir>/ota/tuf/image/root.json" in published["detail"]
    assert str(device.env.tmp) not in published["detail"]
    assert "<ota.image_root_file> (v1, ota.image_root_file)" in published["detail"]
    assert device.slot_files() == before
    assert rig.pipeline.model.card.version == 3
    assert rig.updater.store.state.active_version == 3
    # The fix the message names: the device's own copy of root v2, from the repository.
    (device.meta / "root.json").unlink()
    (device.meta / "root_history" / "2.root.json").write_bytes(
        (device.repos.image.meta / "2.root.json").read_bytes()
    )
    (device.meta / "root.json").symlink_to(Path("root_history") / "2.root.json")
    assert rig.updater.check_channel() == "committed", rig.published[-1]
    assert rig.pipeline.model.card.version == 4


def test_damaged_root_is_reseeded_from_an_installed_root_as_new(device: Device) -> None:
    """Never rotated: the installed root file is v1, the newest this device trusted, so
    starting from it again forgets nothing."""
    rig = device.rig
    before = device.slot_files()
    _truncate(device.meta / "root.json")
    assert rig.updater.check_channel() == "idle", rig.updater.channel_note
    assert rig.updater.channel.root_versions["image"] == 1  # type: ignore[union-attr]
    assert device.slot_files() == before
    device.repos.direct(device.release(3))
    assert rig.updater.check_channel() == "committed", rig.published[-1]


def test_start_up_check_with_a_damaged_rotated_root_does_not_crash(device: Device) -> None:
    """At start the serving slot is re-checked against the image root; a damaged one
    that cannot be safely replaced leaves the slot unserved with the reason, never a
    crash and never a check against the older installed root."""
    device.rotate_image_root()
    device.repos.direct(device.release(3))
    assert device.rig.updater.check_channel() == "committed"
    _truncate(device.meta / "root.json")
    trust = SealTrust(
        image_root_file=device.repos.image.meta / "1.root.json", image_meta_dir=device.meta
    )
    boot = SlotBoot.open(device.env.tmp / "state", trust=trust)
    assert boot.store.state.active is None
    assert any("trusted root stored at" in n and "is unreadable" in n for n in boot.notes), (
        boot.notes
    )
