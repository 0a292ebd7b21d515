"""The device updater in-process: real signed bundles of real models, a real pipeline fed
with the synthetic signal from a thread, real slot store. Candidates that output NaN,
blow the latency budget or alarm on most windows are never promoted; one that degrades
during its trial is rolled back; a good one is committed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from conftest import Env
from otamodels import copy_model, nan_model
from rig import PROFILE, SHADOW, TRIAL, Rig, announce, make_bundle, make_rig, ota_config

from edge_agent.profiles import Profile
from edge_agent.updates.slots import Phase
from edge_agent.updates.store import SlotStore


@pytest.fixture
def rig(env: Env, request: pytest.FixtureRequest) -> Iterator[Rig]:
    with make_rig(env, getattr(request, "param", PROFILE)) as r:
        yield r


def test_good_candidate_is_shadowed_promoted_and_committed(rig: Rig) -> None:
    b = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.bundle")
    windows_before = rig.pipeline.stats.windows
    assert rig.updater.process(announce(b)) == "committed"
    assert rig.states == [
        "announced", "downloading", "verifying", "validating", "shadow", "promoted", "committed",
    ]  # fmt: skip
    assert rig.pipeline.model.card.version == 2
    st = SlotStore(rig.env.tmp / "state").state
    assert (st.phase, st.active_version, st.highest_committed_version) == (Phase.COMMITTED, 2, 2)
    shadow = rig.published[5]["figures"]
    assert shadow["windows"] >= SHADOW
    assert shadow["nonfinite"] == 0
    assert 0.5 < shadow["median_ratio"] < 2.0  # same network: same score distribution
    assert rig.published[3]["state"] == "validating"
    assert rig.updater.snapshot()["figures"]["windows"] >= TRIAL
    assert rig.pipeline.stats.windows > windows_before
    # The retained announcement comes back on every reconnect: handled once only.
    assert rig.updater.process(announce(b)) == "ignored"
    assert len(rig.published) == 7


def test_candidate_outputting_nan_is_never_promoted(rig: Rig) -> None:
    b = make_bundle(rig.env, nan_model(rig.env.tmp / "nan", 2), "nan.bundle")
    assert rig.updater.process(announce(b)) == "failed"
    assert rig.states[-1] == "failed"
    assert "non-finite" in rig.published[-1]["detail"]
    assert "promoted" not in rig.states
    assert rig.pipeline.model.card.version == 1
    st = SlotStore(rig.env.tmp / "state").state
    assert st.phase is Phase.ABANDONED
    assert st.active is None


def test_candidate_nan_on_live_windows_fails_shadow(rig: Rig) -> None:
    # Golden vectors pass (they stay below 20 sigma); the live signal, scaled, does not.
    rig.feeder.gain = 50.0
    b = make_bundle(rig.env, nan_model(rig.env.tmp / "nan", 2, above=20.0), "nan.bundle")
    assert rig.updater.process(announce(b)) == "failed"
    assert rig.states[-2:] == ["shadow", "failed"]
    assert "NaN/inf" in rig.published[-1]["detail"]
    assert rig.published[-1]["figures"]["nonfinite"] > 0
    assert rig.pipeline.model.card.version == 1


def test_candidate_alarming_on_most_windows_fails_shadow(rig: Rig) -> None:
    b = make_bundle(rig.env, copy_model(rig.env.tmp / "noisy", 2, threshold=1e-9), "n.bundle")
    assert rig.updater.process(announce(b)) == "failed"
    fig = rig.published[-1]["figures"]
    assert rig.states[-2:] == ["shadow", "failed"]
    assert "alarm rate" in rig.published[-1]["detail"]
    assert fig["candidate_alarm_rate"] == 1.0
    assert fig["active_alarm_rate"] < 0.05
    assert rig.pipeline.model.card.version == 1


@pytest.mark.parametrize("rig", [Profile(name="rpi5", window_latency_ms=1e-6)], indirect=True)
def test_candidate_over_latency_budget_is_never_promoted(rig: Rig) -> None:
    b = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.bundle")
    assert rig.updater.process(announce(b)) == "failed"
    assert rig.states[-2:] == ["validating", "failed"]
    assert "exceeds the profile budget" in rig.published[-1]["detail"]
    assert rig.pipeline.model.card.version == 1


def test_candidate_degrading_during_trial_is_rolled_back(rig: Rig) -> None:
    b = make_bundle(rig.env, nan_model(rig.env.tmp / "nan", 2, above=20.0), "nan.bundle")
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(rig.updater.process(announce(b))))
    t.start()
    deadline = time.monotonic() + 30
    while "promoted" not in rig.states and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.005)
    assert "promoted" in rig.states
    rig.feeder.gain = 50.0  # the process changes: the new model now outputs NaN
    t.join(30)
    assert result == ["rolled_back"]
    assert "NaN/inf" in rig.published[-1]["detail"]
    assert rig.pipeline.model.card.version == 1  # swapped back in memory
    st = SlotStore(rig.env.tmp / "state").state
    assert st.active is None
    assert st.phase is Phase.IDLE


def test_rollback_during_trial_returns_to_previous_slot(rig: Rig) -> None:
    assert (
        rig.updater.process(
            announce(make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "2.b"))
        )
        == "committed"
    )
    b3 = make_bundle(rig.env, nan_model(rig.env.tmp / "nan", 3, above=20.0), "3.b")
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(rig.updater.process(announce(b3))))
    t.start()
    deadline = time.monotonic() + 30
    while rig.states.count("promoted") < 2 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.005)
    rig.feeder.gain = 50.0
    t.join(30)
    assert result == ["rolled_back"]
    assert rig.pipeline.model.card.version == 2
    st = SlotStore(rig.env.tmp / "state").state
    assert (st.phase, st.active_version, st.highest_committed_version) == (
        Phase.ROLLED_BACK, 2, 2,
    )  # fmt: skip


def test_announced_bundle_below_installed_version_is_rejected_before_download(rig: Rig) -> None:
    b = make_bundle(rig.env, copy_model(rig.env.tmp / "v1", 1), "v1.bundle")
    assert rig.updater.process(announce(b)) == "rejected"
    assert rig.states == ["announced", "rejected"]
    assert "RollbackError" in rig.published[-1]["detail"]
    assert not (rig.env.tmp / "state" / "ota" / "downloads").exists()


def test_failed_download_is_retried_by_itself_and_not_counted_as_a_crash(rig: Rig) -> None:
    from edge_agent.updates.updater import MAX_ATTEMPTS

    b = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.bundle")
    payload = announce(b)
    away = b.with_suffix(".away")
    b.rename(away)  # the server is down: every download fails
    rig.updater.ota = ota_config(rig.env, retry_min_s=0.05, retry_max_s=0.1)
    rig.updater.start()
    rig.updater.on_announcement(payload)  # once: no re-announcement, no reconnect
    deadline = time.monotonic() + 10
    while rig.states.count("failed") <= MAX_ATTEMPTS and time.monotonic() < deadline:
        time.sleep(0.02)
    fails = [p for p in rig.published if p["state"] == "failed"]
    assert len(fails) > MAX_ATTEMPTS  # more failures than crash-loop attempts: not given up
    assert all("DownloadError" in p["detail"] and "trying again in" in p["detail"] for p in fails)
    retry = rig.updater.snapshot()["retry"]
    assert retry is not None
    assert retry["version"] == 2
    assert retry["failures"] >= MAX_ATTEMPTS
    away.rename(b)  # the server is back
    deadline = time.monotonic() + 30
    while "committed" not in rig.states and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.states[-1] == "committed", rig.published[-3:]
    assert rig.pipeline.model.card.version == 2
    assert rig.updater.snapshot()["retry"] is None


def test_newer_announcement_replaces_a_pending_retry(rig: Rig) -> None:
    b2 = make_bundle(rig.env, copy_model(rig.env.tmp / "v2", 2), "v2.bundle")
    p2 = announce(b2)
    b2.unlink()  # v2 can never be fetched
    rig.updater.ota = ota_config(rig.env, retry_min_s=60.0, retry_max_s=60.0)
    assert rig.updater.process(p2) == "failed"
    assert rig.updater.snapshot()["retry"]["version"] == 2
    b3 = make_bundle(rig.env, copy_model(rig.env.tmp / "v3", 3), "v3.bundle")
    assert rig.updater.process(announce(b3)) == "committed"
    assert rig.updater.snapshot()["retry"] is None  # v2 is not tried again behind v3
