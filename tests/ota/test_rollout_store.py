"""Rollout persistence and the director's side, against real files and real TUF
repositories (no broker): the state file round-trips and lives beside the director, a
second driver is refused naming the first (a real second process), control requests,
and the director edits a rollout makes (direct a wave, restore, hand over to the group)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from otamodels import copy_model
from tufrig import make_repos

from ota.build import plan_bundle
from ota.bundle import write_bundle
from ota.rollout import Rollout, RolloutUsageError, Target, parse_threshold, parse_waves, plan
from ota.rollout_director import (
    complete_group,
    device_entries,
    direct_devices,
    group_entry,
    restore_devices,
)
from ota.rollout_observe import Observation
from ota.rollout_store import RolloutBusyError, RolloutStore, default_state_dir
from ota.tufrepo import target_custom
from tests.agentutil import REPO

FAM = "vibration-ae"
NAME = "vibration-ae-fp32-onnx"  # the model name: director entries are per name


def _rollout(group: str = "line-1") -> Rollout:
    obs = {d: Observation(d, group, True, "", {FAM: (1,)}) for d in ("gw-1", "gw-2")}
    return plan(
        rid="r-1", group=group, target=Target("t/t-v2.bundle", "t", FAM, 2), previous=None,
        observations=obs, waves=parse_waves("1,100%"), threshold=parse_threshold("0"),
        options={"waves": "1,100%", "soak_s": 0.0, "max_failures": "0", "min_devices": 1,
                 "wave_deadline_s": 60.0},
        prev_entries={}, min_devices=1, now=1.0,
    )  # fmt: skip


def test_state_lives_beside_the_director_and_round_trips(tmp_path: Path) -> None:
    director = tmp_path / "repo" / "director"
    director.mkdir(parents=True)
    root = default_state_dir(director)
    assert root == tmp_path / "repo" / "director.rollouts"
    store = RolloutStore(root)
    assert store.load("line-1") is None
    r = _rollout()
    store.save(r)
    loaded = store.load("line-1")
    assert loaded is not None
    assert loaded.to_json() == r.to_json()
    assert not list(root.glob(".*.tmp"))  # nothing left of the atomic write
    store.archive(r)
    assert store.load("line-1") is None
    assert (root / "line-1.r-1.json").is_file()
    with pytest.raises(RolloutUsageError):
        store.path("../etc")


def test_a_second_driver_is_refused_naming_the_holder(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "st")
    code = textwrap.dedent(f"""
        import sys, time
        from ota.rollout_store import RolloutStore
        with RolloutStore({str(tmp_path / "st")!r}).lock("line-1", "start"):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    p = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "locked"
        holder = store.holder("line-1")
        assert holder is not None
        assert holder["pid"] == p.pid
        assert holder["command"] == "start"
        with (
            pytest.raises(RolloutBusyError, match=f"pid {p.pid} on .*rollout start"),
            store.lock("line-1", "resume"),
        ):
            pass
    finally:
        assert p.stdin is not None
        p.stdin.close()
        p.wait(10)
        if p.stdout is not None:
            p.stdout.close()
    assert store.holder("line-1") is None  # released with its process
    with store.lock("line-1", "resume"):
        assert store.holder_info("line-1")["pid"] == os.getpid()


def test_control_requests_are_taken_once(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)
    assert store.take_request("line-1") is None
    store.request("line-1", "pause", 5.0)
    got = store.take_request("line-1")
    assert got is not None
    assert got["request"] == "pause"
    assert store.take_request("line-1") is None
    store.control_path("line-1").write_text("junk")
    assert store.take_request("line-1") is None
    assert not store.control_path("line-1").exists()


def _bundle(tmp: Path, version: int) -> Path:
    model = copy_model(tmp / f"m{version}", version)
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    p = plan_bundle(model, profiles=["x86-generic"], created=now,
                    expires=now + timedelta(days=3), min_agent_version="0.1.0")  # fmt: skip
    out = tmp / f"v{version}.bundle"
    write_bundle(out, p.manifest, p.sources)
    return out


def test_director_edits_direct_restore_and_hand_over_to_the_group(tmp_path: Path) -> None:
    with make_repos(tmp_path) as repos:
        v1 = repos.release(_bundle(tmp_path, 1))
        v2 = repos.release(_bundle(tmp_path, 2))
        repos.direct(v1, groups=["line-1"])
        repos.direct(v1, groups=[], devices=["gw-3"])  # gw-3 had its own entry
        d, i, key = repos.director, repos.image, repos.director_online
        assert group_entry(d, NAME, "line-1") == {"path": v1, "version": 1}
        assert device_entries(d, NAME, ["gw-1", "gw-3"]) == {"gw-3": v1}

        def entries() -> dict[str, tuple[list[str], list[str]]]:
            md = d.targets().signed.targets
            return {p: (target_custom(t)["groups"], target_custom(t)["devices"]) for p, t in
                    md.items()}  # fmt: skip

        direct_devices(d, i, target=v2, devices=["gw-1", "gw-3"], online=key, now=repos.now)
        direct_devices(d, i, target=v2, devices=["gw-1", "gw-3"], online=key, now=repos.now)
        assert entries() == {v1: (["line-1"], []), v2: ([], ["gw-1", "gw-3"])}
        restore_devices(d, i, target=v2, prev_entries={"gw-1": None, "gw-3": v1}, online=key,
                        now=repos.now)  # fmt: skip
        assert entries() == {v1: (["line-1"], ["gw-3"])}
        direct_devices(d, i, target=v2, devices=["gw-1", "gw-2"], online=key, now=repos.now)
        complete_group(d, i, target=v2, name=NAME, group="line-1", devices=["gw-1", "gw-2"],
                       online=key, now=repos.now)  # fmt: skip
        assert entries() == {v1: ([], ["gw-3"]), v2: (["line-1"], [])}
        # a driver died after handing over, before recording it: abort takes the group back
        restore_devices(d, i, target=v2, prev_entries={"gw-1": None, "gw-2": None},
                        online=key, now=repos.now, group="line-1", group_prev=v1)  # fmt: skip
        assert entries() == {v1: (["line-1"], ["gw-3"])}
        assert json.loads((d.meta / "timestamp.json").read_text())["signed"]["version"] >= 6


class _StopError(Exception):
    pass


def test_a_driver_that_cannot_read_the_broker_judges_no_device(tmp_path: Path) -> None:
    """Past the wave deadline, but the operator's broker connection is down: no device is
    failed for it; the driver says why and tries again at the next poll."""
    from ota.fleet_mqtt import BrokerOptions
    from ota.rollout import mark_directed, mark_directing
    from ota.rollout_driver import Driver, Repos
    from tests.mosquitto import free_port

    store = RolloutStore(tmp_path / "st")
    r = mark_directed(mark_directing(_rollout(), 1, 1.0), 1, 1.0)
    store.save(r)
    said: list[str] = []

    def sleep(_s: float) -> None:
        raise _StopError

    d = Driver(
        store=store, repos=Repos(tmp_path / "director"), broker=BrokerOptions(port=free_port()),
        clock=lambda: 1_000_000.0, sleep=sleep, say=said.append,
    )  # fmt: skip
    with pytest.raises(_StopError):
        d.drive(r)
    assert any("cannot read the fleet state" in x for x in said), said
    kept = store.load("line-1")
    assert kept is not None
    assert kept.devices["gw-1"].state.value == "directed"
    assert kept.failures() == []


def test_the_driver_prints_each_event_once_past_the_capped_history(tmp_path: Path) -> None:
    from ota.fleet_mqtt import BrokerOptions
    from ota.rollout_driver import Driver, Repos

    said: list[str] = []
    d = Driver(store=RolloutStore(tmp_path), repos=Repos(tmp_path), broker=BrokerOptions(),
               say=said.append)  # fmt: skip
    r = _rollout()
    d.save(r)
    for i in range(510):  # the history keeps the last 500
        r.note(10.0 + i, f"event {i}")
        d.save(r)
    assert len(r.events) == 500
    assert [x.split(" ", 1)[1] for x in said] == [
        "planned 2 device(s) in 2 wave(s)",
        *(f"event {i}" for i in range(510)),
    ]
