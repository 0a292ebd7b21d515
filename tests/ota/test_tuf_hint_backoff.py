"""MQTT hints carry no trust: a flood of them may make the device refresh its channel
metadata (at most every 5 s) but must not defeat the backoff after a failed download.
Real repositories over real HTTP, ngclient, the real updater (as test_tuf_attacks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Env
from otamodels import copy_model
from rig import Rig, make_bundle, make_rig
from tufrig import Repos, make_repos

from edge_agent.updates.channel import UpdateChannel


@pytest.fixture
def device(env: Env) -> Iterator[tuple[Repos, Rig]]:
    with make_repos(env.tmp / "repos") as repos:
        channel = UpdateChannel(repos.channel(), env.tmp / "state")
        with make_rig(env, channel=channel) as rig:
            yield repos, rig


def _release(env: Env, repos: Repos, version: int) -> tuple[str, Path]:
    d = copy_model(env.tmp / f"model-v{version}", version)
    path = repos.release(make_bundle(env, d, f"vib-v{version}.bundle"))
    served = next((repos.image.path / "targets").rglob(f"*.{path.split('/')[-1]}"))
    return path, served


def test_hint_flood_does_not_redownload_a_failed_target_before_its_backoff(
    env: Env, device: tuple[Repos, Rig]
) -> None:
    repos, rig = device
    path, served = _release(env, repos, 2)
    repos.direct(path)
    evil = bytearray(served.read_bytes())
    evil[-2000] ^= 0xFF
    served.write_bytes(bytes(evil))
    assert rig.updater.check_channel() == "failed"
    assert "HashMismatchError" in rig.published[-1]["detail"]
    downloads = sum(1 for m in rig.published if m["state"] == "downloading")
    # What a hint flood does: refresh after refresh, long before retry_min_s (10 s).
    for _ in range(3):
        rig.updater.on_hint()
        rig.updater.check_channel()
    assert sum(1 for m in rig.published if m["state"] == "downloading") == downloads
    assert rig.pipeline.model.card.version == 1
    assert not (env.tmp / "state" / "slots").exists()
    # Verified metadata naming a new version replaces the pending retry at once.
    path3, _ = _release(env, repos, 3)
    repos.direct(path3)
    assert rig.updater.check_channel() == "committed", rig.published[-1]
    assert rig.pipeline.model.card.version == 3


def test_a_group_named_as_a_string_is_not_matched_by_substring(
    env: Env, device: tuple[Repos, Rig]
) -> None:
    """The director's `groups`/`devices` are lists of names; a director entry written
    by another tool with a plain string "line-10" must not direct group "line-1"
    (nor device "gw-01" by "gw-012")."""
    repos, rig = device
    path, _ = _release(env, repos, 2)
    repos.direct(path, groups=("line-10",))
    md = repos.director.targets()
    edge = md.signed.targets[path].unrecognized_fields["custom"]["edge"]
    edge["groups"], edge["devices"] = "line-10", "gw-012"
    repos.director.publish_targets(md, [repos.director_online], repos.director_online, repos.now)
    assert rig.updater.check_channel() == "idle"
    assert rig.updater.channel_note.startswith("the director names no target for device")
    assert rig.pipeline.model.card.version == 1
    assert not (env.tmp / "state" / "slots").exists()
