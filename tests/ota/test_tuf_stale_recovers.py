"""Issue 14: an expired timestamp is reported as "update channel stale since ..." in
status and on MQTT. Once the operator signs a fresh timestamp and the device refreshes,
the channel is no longer stale, so status and the retained `state/ota` must stop saying
so (found by hand: `edge-agent status` kept "ota stale" and the retained summary kept
phase "stale" through every later successful refresh, until the next update)."""

from __future__ import annotations

from datetime import timedelta

from conftest import Env
from otamodels import copy_model
from rig import make_bundle, make_rig
from tufrig import make_repos

from edge_agent.updates.channel import UpdateChannel


def test_stale_channel_is_no_longer_reported_once_a_fresh_timestamp_is_read(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        channel = UpdateChannel(repos.channel(), env.tmp / "state")
        with make_rig(env, channel=channel) as rig:
            v2 = make_bundle(env, copy_model(env.tmp / "model-v2", 2), "vib-v2.bundle")
            repos.direct(repos.release(v2))
            assert rig.updater.check_channel() == "committed", rig.published[-1]
            repos.image.refresh_timestamp(repos.image_online, repos.now - timedelta(days=2))
            assert rig.updater.check_channel() == "stale"
            assert rig.updater.snapshot()["state"] == "stale"
            # The operator's daily `edge-ota repo timestamp` runs again.
            repos.image.refresh_timestamp(repos.image_online, repos.now)
            assert rig.updater.check_channel() == "idle"
            assert rig.updater.channel_note == ""
            snap = rig.updater.snapshot()
            assert snap["channel"]["note"] == ""
            assert snap["state"] != "stale", (
                f"status still says the channel is stale after a fresh timestamp: {snap['state']}"
            )
            assert rig.pipeline.model.card.version == 2
