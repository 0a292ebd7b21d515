"""A device with a TUF update channel has one trust path: MQTT announcements (the legacy
flow for devices without a channel) are refused unread -- a forged one and one
genuinely signed by the device's own `ota.root_file` keys alike -- and only count as a
hint to refresh the channel. Real repositories over real HTTP (tufrig), ngclient, the
real updater with a real root, real signed bundles."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import Env
from otamodels import copy_model
from rig import Rig, announce, make_bundle, make_rig
from tufrig import Repos, make_repos

from edge_agent.updates.channel import UpdateChannel
from edge_agent.updates.updater import ANNOUNCEMENTS_IGNORED
from ota.bundle import add_signatures, read_header
from ota.keys import PrivateKey
from ota.signing import sign_bytes


@dataclass
class Device:
    env: Env
    repos: Repos
    rig: Rig

    def slot_files(self) -> dict[str, bytes]:
        root = self.env.tmp / "state" / "slots"
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def device(env: Env) -> Iterator[Device]:
    """v2 committed through the channel; the updater also holds the root the
    announcements below are signed for (`ota.root_file` configured beside the channel)."""
    with make_repos(env.tmp / "repos") as repos:
        channel = UpdateChannel(repos.channel(), env.tmp / "state")
        with make_rig(env, channel=channel) as rig:
            assert rig.updater.root is not None
            d2 = copy_model(env.tmp / "model-v2", 2)
            repos.direct(repos.release(make_bundle(env, d2, "vib-v2.bundle")))
            assert rig.updater.check_channel() == "committed", rig.published[-1]
            yield Device(env, repos, rig)


def _forged(env: Env) -> bytes:
    """A v3 bundle signed by keys the device does not trust."""
    b = make_bundle(env, copy_model(env.tmp / "model-forged", 3), "forged-v3.bundle")
    data = read_header(b).manifest_bytes
    strangers = [PrivateKey.generate(), PrivateKey.generate()]
    forged = env.tmp / "forged-resigned.bundle"
    forged.write_bytes(b.read_bytes())
    add_signatures(forged, [sign_bytes(k, data) for k in strangers])
    return announce(forged)


def test_forged_and_genuine_announcements_are_refused_on_a_channel_device(
    device: Device,
) -> None:
    rig, before = device.rig, device.slot_files()
    published = len(rig.published)
    # Signed by a threshold of the device's own root keys, served from its local dir:
    # without a channel this one would be installed (test_updater).
    genuine = announce(make_bundle(device.env, copy_model(device.env.tmp / "m3", 3), "v3.b"))
    forged = _forged(device.env)
    for payload in (forged, genuine):
        rig.updater.on_announcement(payload)  # from MQTT: not queued
        assert rig.updater.process(payload) == "ignored"  # nor acted on if it were
    snap = rig.updater.snapshot()
    assert snap["ignored_announcements"] == 4
    assert snap["channel"]["announcements"] == ANNOUNCEMENTS_IGNORED
    assert "TUF update channel" in ANNOUNCEMENTS_IGNORED
    assert len(rig.published) == published  # no OTA state: nothing changed here
    assert device.slot_files() == before
    assert rig.pipeline.model.card.version == 2
    assert rig.updater.store.state.active_version == 2
    # The channel still decides: a directed v3 goes.
    d3 = copy_model(device.env.tmp / "model-v3", 3)
    device.repos.direct(device.repos.release(make_bundle(device.env, d3, "vib-v3.bundle")))
    assert rig.updater.check_channel() == "committed", rig.published[-1]
    assert rig.pipeline.model.card.version == 3
