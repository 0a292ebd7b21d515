"""A rotation of the image repository's keys (`edge-ota repo rotate`) revokes keys for
metadata the device has not yet verified; it does not unmake what the device verified
before. Slots installed under the old root -- the one serving and the rollback target --
still pass the start-up check after the device walked to the new root and restarted,
whether the rotation kept or revoked the old targets keys: each slot's targets record is
re-checked against the root it was verified under when installed (recorded in its seal,
kept in the device's root history, linked to the trusted root by the chain). What that
check is for stays intact: a slot whose files were changed after the rotation is refused,
and so is a seal that claims another root than the one its record verifies under. Real
image and director repositories over real HTTP (tufrig), python-tuf's ngclient, the
real updater, slot store and start-up check."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import Env
from otamodels import FP32, copy_model
from rig import PROFILE, Rig, make_bundle, make_rig
from test_slot_seal import tamper_slot
from test_tuf_slot_seal import rewrite_layout
from tufrig import Repos, make_repos

from edge_agent.errors import StateError
from edge_agent.updates.boot import SlotBoot
from edge_agent.updates.channel import UpdateChannel
from edge_agent.updates.seal import SealTrust
from edge_agent.updates.slots import Slot
from ota.keys import PrivateKey
from ota.tufrepo import RepoKeys


def _state(env: Env) -> Path:
    return env.tmp / "state"


@contextmanager
def _device(
    env: Env, repos: Repos, installed: str = "1.root.json"
) -> Iterator[tuple[SlotBoot, Rig]]:
    """One start of the device: the start-up check (SlotBoot.open with the channel's trust
    anchors, as the agent does), then the updater on that store. `installed`: the image
    root file installed with the agent."""
    trust = SealTrust(
        image_root_file=repos.image.meta / installed,
        image_meta_dir=_state(env) / "ota" / "tuf" / "image",
    )
    boot = SlotBoot.open(_state(env), trust=trust)
    channel = UpdateChannel(repos.channel(), _state(env))
    with make_rig(env, channel=channel, store=boot.store) as rig:
        yield boot, rig


def _release(env: Env, repos: Repos, version: int) -> str:
    d = copy_model(env.tmp / f"model-v{version}", version)
    return repos.release(make_bundle(env, d, f"vib-v{version}.bundle"))


def _rotate(repos: Repos, *, revoke: bool) -> None:
    """Image root v2: root key b replaced by c; the targets keys become {a, c} (b revoked
    for targets too) or stay {a, b}. The operator then signs the targets again with the
    targets keys of the new root, as devices that walked to it require."""
    a, b = repos.image_keys
    c = PrivateKey.generate()
    targets = [a, c] if revoke else [a, b]
    keys = RepoKeys(
        [a.public, c.public], 2, [k.public for k in targets], 2, repos.image_online.public
    )
    assert repos.image.rotate_root(keys, old_signers=[a, b], new_signers=[a, c], now=repos.now) == 2
    repos.image_keys = targets
    repos.image.publish_targets(repos.image.targets(), targets, repos.image_online, repos.now)


def _installed_then_rotated(env: Env, repos: Repos, *, revoke: bool) -> None:
    """v2 (slot a, the rollback target) and v3 (slot b, serving) installed under image
    root v1; then the rotation, which the device walks to while v3 keeps serving."""
    with _device(env, repos) as (_, rig):
        repos.direct(_release(env, repos, 2))
        assert rig.updater.check_channel() == "committed", rig.published[-1]
        repos.direct(_release(env, repos, 3))
        assert rig.updater.check_channel() == "committed", rig.published[-1]
        _rotate(repos, revoke=revoke)
        assert rig.updater.check_channel() == "idle", rig.updater.channel_note
        assert rig.updater.channel.root_versions["image"] == 2  # type: ignore[union-attr]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.mark.parametrize("revoke", [True, False], ids=["revokes-targets-key", "keeps-targets-keys"])
def test_slots_installed_before_an_image_key_rotation_still_serve_after_restarts(
    env: Env, revoke: bool
) -> None:
    with make_repos(env.tmp / "repos") as repos:
        _installed_then_rotated(env, repos, revoke=revoke)
        # Restarted after the rotation, before any new install: both slots pass.
        with _device(env, repos) as (boot, rig):
            assert boot.notes == []
            st = boot.store.state
            assert (st.active, st.previous, st.active_version) == (Slot.B, Slot.A, 3)
            assert boot.store.check_slot(Slot.B) is None
            assert boot.store.check_slot(Slot.A) is None
            assert boot.load(FP32, PROFILE, "vib").card.version == 3
            assert boot.sources == {"vib": "slot b"}
            # The next release, signed with the new root's targets keys, goes into slot a.
            repos.direct(_release(env, repos, 4))
            assert rig.updater.check_channel() == "committed", rig.published[-1]
        # Restarted again: v4 (sealed under root v2) serves, v3 (under root v1) is the
        # rollback target, and the technician's rollback to it works.
        with _device(env, repos) as (boot, _):
            assert boot.notes == []
            st = boot.store.state
            assert (st.active, st.previous, st.active_version) == (Slot.A, Slot.B, 4)
            assert boot.load(FP32, PROFILE, "vib").card.version == 4
            assert boot.store.check_slot(Slot.B) is None
            boot.store.rollback("technician's rollback", _now())
            assert boot.load(FP32, PROFILE, "vib").card.version == 3
            assert boot.sources == {"vib": "slot b"}


def test_serving_slot_changed_on_disk_after_a_rotation_is_refused(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        _installed_then_rotated(env, repos, revoke=True)
        slots = _state(env) / "slots"
        tamper_slot(slots / "b", slots / "b.manifest.json", env.tmp / "other")
        rewrite_layout(slots, "b")
        with _device(env, repos) as (boot, _):
            assert any("slot b: files do not match the signed target" in n for n in boot.notes)
            st = boot.store.state
            assert (st.active, st.active_version) == (Slot.A, 2)  # the intact rollback slot
            assert boot.load(FP32, PROFILE, "vib").card.version == 2
            assert not (slots / "b").exists()  # the changed files were never loaded


def test_rollback_slot_changed_on_disk_after_a_rotation_is_refused(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        _installed_then_rotated(env, repos, revoke=True)
        slots = _state(env) / "slots"
        tamper_slot(slots / "a", slots / "a.manifest.json", env.tmp / "other")
        rewrite_layout(slots, "a")
        with _device(env, repos) as (boot, _):
            assert boot.notes == []  # the serving slot is intact
            assert boot.load(FP32, PROFILE, "vib").card.version == 3
            why = boot.store.check_slot(Slot.A)
            assert why is not None
            assert "slot a: files do not match the signed target" in why
            with pytest.raises(StateError, match="cannot roll back: slot a: files do not"):
                boot.store.rollback("technician's rollback", _now())
            assert boot.store.state.active == Slot.B


def test_seal_claiming_another_root_than_its_record_verifies_under_is_refused(
    env: Env,
) -> None:
    """A slot's targets record (signed by the revoked key b) is checked under the root
    its seal names, and that root must be linked to the trusted one by the history."""
    with make_repos(env.tmp / "repos") as repos:
        _installed_then_rotated(env, repos, revoke=True)
        slots = _state(env) / "slots"
        meta = _state(env) / "ota" / "tuf" / "image"
        seal_path = slots / "a.seal.json"
        sealed = seal_path.read_bytes()
        seal = json.loads(sealed)
        assert seal["tuf"]["root"] == 1  # installed under image root v1
        with _device(env, repos) as (boot, _):
            store = boot.store
            assert store.check_slot(Slot.A) is None
            seal["tuf"]["root"] = 2  # the trusted root: b is no targets key there
            seal_path.write_text(json.dumps(seal))
            why = str(store.check_slot(Slot.A))
            assert "not signed by the image targets keys of root v2" in why, why
            seal["tuf"]["root"] = 3  # newer than any root this device accepted
            seal_path.write_text(json.dumps(seal))
            why = str(store.check_slot(Slot.A))
            assert "sealed under image root v3" in why, why
            assert "newer than the trusted root v2" in why
            seal_path.write_bytes(sealed)
            assert store.check_slot(Slot.A) is None
            # Root v1 is no longer linked to the trusted root: its history copy is gone.
            (meta / "root_history" / "1.root.json").unlink()
            why = str(store.check_slot(Slot.A))
            assert "not linked to the trusted root v2" in why, why
            assert "root_history/1.root.json" in why


def test_slots_pass_under_a_newer_installed_root_when_the_history_skips_versions(
    env: Env,
) -> None:
    """An agent upgrade installs image root v3 on a device that had walked only to v1:
    its history has no v2, so a slot sealed under v1 cannot be linked to v3. It is then
    checked under the trusted v3 itself, which kept the targets keys: it passes."""
    with make_repos(env.tmp / "repos") as repos:
        with _device(env, repos) as (_, rig):
            repos.direct(_release(env, repos, 2))
            assert rig.updater.check_channel() == "committed", rig.published[-1]
            repos.direct(_release(env, repos, 3))
            assert rig.updater.check_channel() == "committed", rig.published[-1]
        a, b = repos.image_keys
        c, d = PrivateKey.generate(), PrivateKey.generate()
        targets, online = [a.public, b.public], repos.image_online.public
        for version, old, new in ((2, [a, b], [a, c]), (3, [a, c], [a, d])):
            keys = RepoKeys([k.public for k in new], 2, targets, 2, online)
            rotated = repos.image.rotate_root(keys, old_signers=old, new_signers=new, now=repos.now)
            assert rotated == version
        with _device(env, repos, installed="3.root.json") as (boot, _):
            assert boot.notes == []
            assert boot.store.check_slot(Slot.A) is None
            assert boot.load(FP32, PROFILE, "vib").card.version == 3
