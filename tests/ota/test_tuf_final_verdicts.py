"""A directed target whose signed bytes this device cannot take (built for another
profile) is a final verdict: reported once, recorded by its signed identity and not
downloaded again at every hint or refresh until the director names a new version. The
same bytes would be refused the same way; retrying them only spends the link."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from conftest import NOW, Env
from otamodels import copy_model
from rig import make_bundle, make_rig
from tufrig import make_repos

from edge_agent.updates.channel import UpdateChannel
from ota.build import plan_bundle
from ota.bundle import add_signatures, read_header, write_bundle
from ota.signing import sign_bytes


def _bundle_for(env: Env, version: int, profile: str) -> Path:
    model = copy_model(env.tmp / f"model-v{version}", version)
    plan = plan_bundle(model, profiles=[profile], created=NOW - timedelta(hours=1),
                       expires=NOW + timedelta(days=30), min_agent_version="0.1.0")  # fmt: skip
    out = env.tmp / f"v{version}-{profile}.bundle"
    write_bundle(out, plan.manifest, plan.sources)
    data = read_header(out).manifest_bytes
    add_signatures(out, [sign_bytes(k, data) for k in env.keys[:2]])
    return out


def test_a_target_for_another_profile_is_refused_once_and_not_fetched_again(env: Env) -> None:
    with make_repos(env.tmp / "repos") as repos:
        channel = UpdateChannel(repos.channel(), env.tmp / "state")
        with make_rig(env, channel=channel) as rig:
            path = repos.release(_bundle_for(env, 2, "jetson-orin-nano"))
            repos.direct(path)
            assert rig.updater.check_channel() == "failed"
            last = rig.updater.snapshot()["last_result"]
            assert last.startswith("failed v2: ProfileMismatchError"), last
            assert "not tried again" in rig.published[-1]["detail"]
            assert [p["state"] for p in rig.published].count("downloading") == 1
            # Hints and refreshes later (past any backoff): nothing is downloaded again.
            seen = len(rig.published)
            for _ in range(3):
                rig.updater._channel_retry = None  # as if the backoff had passed
                assert rig.updater.check_channel() == "idle"
            assert [p["state"] for p in rig.published[seen:]] == []
            assert rig.pipeline.model.card.version == 1
            # A new version that suits the device goes.
            repos.direct(repos.release(make_bundle(env, copy_model(env.tmp / "m3", 3), "v3.b")))
            assert rig.updater.check_channel() == "committed"
            assert rig.pipeline.model.card.version == 3
