"""The model card inside a bundle must name the model, family and version its signed
manifest names: the serving card's version is the anti-rollback floor and what status
reports, so a bundle whose card says v900 under a manifest for v3 must never serve
(it would show v900 and refuse every later release below it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import NOW, Env
from otamodels import copy_model
from rig import Rig, make_bundle, make_rig
from tufrig import Repos, make_repos

from edge_agent.updates.channel import UpdateChannel
from ota.build import plan_bundle
from ota.bundle import add_signatures, read_header, write_bundle
from ota.signing import sign_bytes


@pytest.fixture
def device(env: Env) -> Iterator[tuple[Repos, Rig]]:
    with (
        make_repos(env.tmp / "repos") as repos,
        make_rig(env, channel=UpdateChannel(repos.channel(), env.tmp / "state")) as rig,
    ):
        yield repos, rig


def _bundle_claiming(env: Env, card_version: int, manifest_version: int) -> Path:
    """A bundle whose manifest (signed, released) says one version, its card another."""
    plan = plan_bundle(
        copy_model(env.tmp / f"m{card_version}-{manifest_version}", card_version),
        profiles=["rpi5"],
        created=NOW - timedelta(hours=1),
        expires=NOW + timedelta(days=30),
        min_agent_version="0.1.0",
    )
    manifest = dataclasses.replace(plan.manifest, version=manifest_version)
    out = env.tmp / f"odd-{card_version}-{manifest_version}.bundle"
    write_bundle(out, manifest, plan.sources)
    data = read_header(out).manifest_bytes
    add_signatures(out, [sign_bytes(k, data) for k in env.keys[:2]])
    return out


def test_a_card_that_disagrees_with_the_signed_manifest_fails_validation(
    env: Env, device: tuple[Repos, Rig]
) -> None:
    repos, rig = device
    repos.direct(repos.release(_bundle_claiming(env, 900, 3)))
    assert rig.updater.check_channel() == "failed"
    detail = rig.published[-1]["detail"]
    assert "validation: the card says" in detail, detail
    assert "v900" in detail, detail
    assert "manifest vibration-ae-fp32-onnx v3" in detail, detail
    assert rig.pipeline.model.card.version == 1
    assert rig.updater.store.state.active is None
    # A consistent v4 still goes (the floor was not raised to 900).
    repos.direct(repos.release(make_bundle(env, copy_model(env.tmp / "m4", 4), "v4.bundle")))
    assert rig.updater.check_channel() == "committed", rig.published[-1]
    assert rig.pipeline.model.card.version == 4
