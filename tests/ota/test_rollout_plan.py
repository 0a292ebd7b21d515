"""Staged rollouts, the pure part (ota/rollout.py, ota/rollout_observe.py): option values,
planning, how a device is judged from its retained state, when the next wave starts, when
the rollout halts, and that the persisted document round-trips. Time is passed in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ota.rollout import (
    Action,
    DeviceState,
    Rollout,
    RolloutError,
    RolloutState,
    RolloutUsageError,
    Target,
    WaveState,
    abort_check,
    advance,
    mark_directed,
    mark_directing,
    parse_duration,
    parse_threshold,
    parse_waves,
    plan,
    wave_sizes,
)
from ota.rollout_observe import Observation, observe

FAM = "vibration-ae"
TARGET = Target("vibration-ae/vibration-ae-v2.bundle", "vibration-ae", FAM, 2)
T0 = 1_800_000_000.0


def obs(
    dev: str,
    version: int = 1,
    *,
    group: str = "line-1",
    online: bool = True,
    phase: str = "idle",
    last: tuple[str, int, str] | None = None,
    ota_ts: float = T0 - 100,
    target: int | None = None,
) -> Observation:
    return Observation(
        device=dev, group=group, online=online, offline_why="" if online else "status offline",
        serving={FAM: (version,)}, phase=phase, ota_target=target,
        last_result=f"{last[0]} v{last[1]}: {last[2]}" if last else "",
        last_outcome=last[0] if last else None, last_version=last[1] if last else None,
        last_reason=last[2] if last else None, ota_ts=ota_ts,
    )  # fmt: skip


def options(**kw: Any) -> dict[str, Any]:
    base = {"waves": "1,100%", "soak_s": 10.0, "max_failures": "0", "min_devices": 1,
            "wave_deadline_s": 600.0, "poll_s": 1.0, "offline_after_s": 900.0}  # fmt: skip
    return {**base, **kw}


def make(
    devices: dict[str, Observation], waves: str = "1,100%", max_failures: str = "0", **kw: Any
) -> Rollout:
    return plan(
        rid="r1", group="line-1", target=TARGET, previous=None, observations=devices,
        waves=parse_waves(waves), threshold=parse_threshold(max_failures),
        options=options(waves=waves, max_failures=max_failures, **kw), prev_entries={},
        min_devices=1, now=T0,
    )  # fmt: skip


def directed(r: Rollout, wave: int, now: float) -> Rollout:
    r, act = advance(r, {}, now)
    assert act == Action("direct", wave)
    return mark_directed(mark_directing(r, wave, now), wave, now)


# --- option values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("10m", 600.0), ("30s", 30.0), ("45", 45.0), ("2.5", 2.5), ("1h", 3600.0)]
)
def test_durations_accept_units_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "ten", "-5", "5x", "1m30s"])
def test_malformed_durations_are_usage_errors(bad: str) -> None:
    with pytest.raises(RolloutUsageError):
        parse_duration(bad)


def test_waves_are_cumulative_counts_or_percentages_of_the_planned_devices() -> None:
    assert wave_sizes(parse_waves("2,20%,100%"), 50) == [2, 10, 50]
    assert wave_sizes(parse_waves("1,10%,50%,100%"), 5) == [1, 3, 5]  # 10% of 5 adds none
    assert wave_sizes(parse_waves("2,20%,100%"), 4) == [2, 4]
    assert wave_sizes(parse_waves("100%"), 3) == [3]
    assert wave_sizes(parse_waves("5,100"), 3) == [3]  # counts past the plan are clamped


def test_waves_must_reach_every_planned_device() -> None:
    with pytest.raises(RolloutUsageError, match="end --waves with 100%"):
        wave_sizes(parse_waves("1,2"), 5)


@pytest.mark.parametrize("bad", ["", "0,100%", "1,150%", "a", "1,,100%"])
def test_malformed_waves_are_usage_errors(bad: str) -> None:
    with pytest.raises(RolloutUsageError):
        parse_waves(bad)


def test_max_failures_is_a_count_or_a_share_of_the_planned_devices() -> None:
    assert parse_threshold("0").allowed(50) == 0
    assert parse_threshold("3").allowed(50) == 3
    assert parse_threshold("5%").allowed(50) == 2
    assert parse_threshold("10%").allowed(50) == 5
    with pytest.raises(RolloutUsageError):
        parse_threshold("x%")


# --- planning ---------------------------------------------------------------------------


def test_plan_takes_online_group_devices_in_sorted_order_and_lists_the_skipped() -> None:
    devs = {
        "gw-3": obs("gw-3"), "gw-1": obs("gw-1"), "gw-2": obs("gw-2", online=False),
        "gw-4": obs("gw-4", group="other"), "gw-0": obs("gw-0"),
    }  # fmt: skip
    devs["gw-5"] = Observation("gw-5", group="line-1", online=True, serving={"other": (1,)})
    devs["gw-6"] = obs("gw-6", 3)  # it would refuse v2
    r = make(devs, "1,100%")
    assert r.planned == ["gw-0", "gw-1", "gw-3"]
    assert r.skipped == {
        "gw-2": "offline at start",
        "gw-5": "serves no stream of model family 'vibration-ae'",
        "gw-6": "serves a version above v2 already",
    }
    assert [w.devices for w in r.waves] == [["gw-0"], ["gw-1", "gw-3"]]
    assert all(d.before == 1 and d.state is DeviceState.PENDING for d in r.devices.values())


def test_plan_refuses_fewer_online_devices_than_min_devices() -> None:
    with pytest.raises(RolloutError, match="fewer than --min-devices 3"):
        plan(
            rid="r", group="line-1", target=TARGET, previous=None,
            observations={"a": obs("a"), "b": obs("b")}, waves=parse_waves("100%"),
            threshold=parse_threshold("0"), options=options(), prev_entries={},
            min_devices=3, now=T0,
        )  # fmt: skip
    with pytest.raises(RolloutError, match="nothing to roll out to"):
        make({"a": obs("a", group="other")})


# --- driving ----------------------------------------------------------------------------


def test_a_wave_succeeds_soaks_and_the_next_starts_then_the_group_completes() -> None:
    r = directed(make({"a": obs("a"), "b": obs("b")}), 1, T0)
    assert r.devices["a"].state is DeviceState.DIRECTED
    assert r.devices["b"].state is DeviceState.PENDING
    # mid-update: not yet a success
    r, act = advance(r, {"a": obs("a", 2, phase="promoted")}, T0 + 5)
    assert act.kind == "wait"
    assert r.devices["a"].state is DeviceState.DIRECTED
    r, act = advance(r, {"a": obs("a", 2, phase="committed")}, T0 + 20)
    assert r.devices["a"].state is DeviceState.SUCCEEDED
    assert act.kind == "wait"  # soaking until T0 + 30
    assert r.waves[0].soak_until == T0 + 30
    r, act = advance(r, {"a": obs("a", 2, phase="committed")}, T0 + 29)
    assert act.kind == "wait"
    r, act = advance(r, {"a": obs("a", 2, phase="committed")}, T0 + 30)
    assert act == Action("direct", 2)
    assert r.waves[0].state is WaveState.DONE
    r = mark_directed(mark_directing(r, 2, T0 + 31), 2, T0 + 31)
    both = {"a": obs("a", 2, phase="committed"), "b": obs("b", 2, phase="committed")}
    r, act = advance(r, both, T0 + 40)
    r, act = advance(r, both, T0 + 50)
    assert act == Action("complete")
    assert r.state is RolloutState.COMPLETING


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (obs("a", 1, phase="rolled_back", last=("rolled back", 2, "alarm rate 0.4 > 0.1")),
         "rolled back v2: alarm rate 0.4 > 0.1"),
        (obs("a", 1, phase="failed", last=("failed", 2, "shadow: candidate alarms on 40%")),
         "failed v2: shadow: candidate alarms on 40%"),
        (obs("a", 1, phase="failed", last=("failed", 2, "validation: golden vectors differ")),
         "failed v2: validation: golden vectors differ"),
        (obs("a", 1, phase="failed", last=("failed", 2, "ProfileMismatchError: x targets rpi5")),
         "failed v2: ProfileMismatchError: x targets rpi5"),
        (obs("a", 1, phase="rejected", ota_ts=T0 + 3), "rejected v2 before downloading it"),
        (obs("a", 1, online=False), "went offline"),
    ],
)  # fmt: skip
def test_a_final_failure_halts_at_the_default_threshold_and_directs_no_one_further(
    report: Observation, reason: str
) -> None:
    r = directed(make({"a": obs("a"), "b": obs("b")}), 1, T0)
    r, act = advance(r, {"a": report}, T0 + 5)
    assert act.kind == "halted"
    assert r.state is RolloutState.HALTED
    assert r.devices["a"].state is DeviceState.FAILED
    assert r.devices["a"].reason.startswith(reason)
    assert r.devices["b"].state is DeviceState.PENDING  # never directed: stays on v1
    assert [f.device for f in r.failures()] == ["a"]
    assert "halted in wave 1" in r.reason
    r2, act = advance(r, {}, T0 + 100)
    assert act.kind == "wait"  # a halted rollout does nothing by itself
    assert r2.state is RolloutState.HALTED


def test_a_transient_download_failure_or_an_old_refusal_is_not_a_failure() -> None:
    r = directed(make({"a": obs("a"), "b": obs("b")}), 1, T0)
    for report in (
        obs("a", phase="failed", last=("failed", 2, "DownloadError: connection refused")),
        obs("a", phase="rejected", ota_ts=T0 - 50),  # stored before it was directed
        obs("a", phase="failed", last=("failed", 3, "validation: other version")),
    ):
        r, act = advance(r, {"a": report}, T0 + 5)
        assert act.kind == "wait", report
        assert r.devices["a"].state is DeviceState.DIRECTED


def test_a_device_not_succeeding_within_the_wave_deadline_fails_as_not_reporting() -> None:
    r = directed(make({"a": obs("a"), "b": obs("b")}, wave_deadline_s=60.0), 1, T0)
    r, act = advance(r, {"a": obs("a", phase="downloading")}, T0 + 59)
    assert act.kind == "wait"
    r, act = advance(r, {"a": obs("a", phase="downloading")}, T0 + 60)
    assert act.kind == "halted"
    assert r.devices["a"].reason.startswith("not reporting: no success within")
    assert "OTA downloading" in r.devices["a"].reason


def test_a_device_rolling_back_during_the_soak_fails() -> None:
    r = directed(make({"a": obs("a"), "b": obs("b")}, soak_s=100.0), 1, T0)
    r, _ = advance(r, {"a": obs("a", 2, phase="committed")}, T0 + 10)
    assert r.devices["a"].state is DeviceState.SUCCEEDED
    back = obs("a", 1, phase="rolled_back", last=("rolled back from", 2, "operator"))
    r, act = advance(r, {"a": back}, T0 + 50)
    assert act.kind == "halted"
    assert r.devices["a"].reason.startswith("stopped serving v2 during soak (serves v1")


def test_failures_within_max_failures_let_the_rollout_go_on() -> None:
    devs = {d: obs(d) for d in ("a", "b", "c", "d")}
    r = directed(make(devs, "2,100%", "1", soak_s=0.0), 1, T0)
    bad = obs("a", phase="failed", last=("failed", 2, "shadow: too many alarms"))
    r, act = advance(r, {"a": bad, "b": obs("b", 2, phase="committed")}, T0 + 5)
    assert act == Action("direct", 2)
    r = mark_directed(mark_directing(r, 2, T0 + 6), 2, T0 + 6)
    bad_c = obs("c", phase="rolled_back", last=("rolled back", 2, "trial: alarms"))
    r, act = advance(r, {"c": bad_c, "d": obs("d", 2, phase="committed")}, T0 + 9)
    assert act.kind == "halted"  # the second failure is past --max-failures 1
    assert [f.device for f in r.failures()] == ["a", "c"]
    assert "halted in wave 2" in r.reason


def test_a_wave_directing_when_the_driver_died_is_directed_again_on_resume() -> None:
    r = make({"a": obs("a"), "b": obs("b")})
    r = mark_directing(r, 1, T0)
    again = Rollout.from_json(json.loads(json.dumps(r.to_json())))
    _, act = advance(again, {}, T0 + 1)
    assert act == Action("direct", 1)


def test_the_persisted_document_round_trips_exactly() -> None:
    r = directed(make({"a": obs("a"), "b": obs("b")}, soak_s=5.0), 1, T0)
    r, _ = advance(r, {"a": obs("a", 2, phase="committed")}, T0 + 3)
    doc = json.loads(json.dumps(r.to_json()))
    assert Rollout.from_json(doc).to_json() == doc
    assert doc["devices"]["a"]["state"] == "succeeded"
    assert doc["waves"][0]["soak_until"] == T0 + 8
    with pytest.raises(RolloutError, match="malformed"):
        Rollout.from_json({**doc, "waves": [{"index": 1}]})
    with pytest.raises(RolloutError, match="format"):
        Rollout.from_json({**doc, "v": 99})


def test_abort_check_says_what_each_directed_device_needs() -> None:
    r = directed(make({"a": obs("a"), "b": obs("b")}), 1, T0)
    rec = r.devices["a"]
    assert abort_check(rec, obs("a", 2, phase="committed"), TARGET) == "rollback"
    assert abort_check(rec, obs("a", 2, phase="shadow"), TARGET) == "wait"
    assert abort_check(rec, obs("a", 1, phase="rolled_back"), TARGET) == "restored"
    assert abort_check(rec, obs("a", 2, online=False), TARGET) == "wait"
    same = make({"a": obs("a", 2), "b": obs("b")}).devices["a"]
    assert abort_check(same, obs("a", 2), TARGET) == "unchanged"


def test_observe_reads_the_retained_sections_as_devices_publish_them() -> None:
    def msg(dev: str, section: str, body: dict[str, Any]) -> tuple[str, bytes]:
        topic = f"edge/{dev}/{section}"
        return topic, json.dumps({"v": 1, "device": dev, "seq": 1, "ts": T0, **body}).encode()

    msgs = [
        msg("gw-1", "status", {"state": "online"}),
        msg("gw-1", "state/health", {"group": "line-1", "verdict": "OK", "reasons": []}),
        msg("gw-1", "state/models", {"streams": [
            {"stream": "s1", "family": FAM, "model": "m", "version": 2, "slot": "slot a",
             "calibration": "none"},
            {"stream": "s2", "family": FAM, "model": "m", "version": 1, "slot": "bundled",
             "calibration": "none"}]}),
        msg("gw-1", "state/ota", {"phase": "rolled_back", "target": None,
            "last_result": "rolled back v2: alarm rate 0.4 > 0.1",
            "last": {"outcome": "rolled back", "version": 2, "reason": "alarm rate 0.4 > 0.1"}}),
        msg("gw-2", "status", {"state": "offline"}),
        ("edge/gw-3/state/ota", b"not json"),
    ]  # fmt: skip
    got = observe("edge", msgs, T0 + 1, 900.0)
    a = got["gw-1"]
    assert (a.group, a.online, a.serving, a.phase) == ("line-1", True, {FAM: (2, 1)}, "rolled_back")
    assert (a.last_outcome, a.last_version, a.last_reason) == (
        "rolled back",
        2,
        "alarm rate 0.4 > 0.1",
    )
    assert not got["gw-2"].online
    assert got["gw-2"].offline_why == "its status says offline"
    # a device serving the target on one stream only is not a success
    r = directed(make({"gw-1": obs("gw-1"), "gw-9": obs("gw-9")}), 1, T0)
    part = Observation("gw-1", "line-1", True, "", {FAM: (2, 1)}, "committed")
    r, act = advance(r, {"gw-1": part}, T0 + 1)
    assert act.kind == "wait"
