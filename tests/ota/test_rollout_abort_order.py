"""Rollout review fixes (issue 17), pure parts and the state directory:

- abort directs a device back to its previous version only once it serves that version
  (or at once if it never installed the target): directed to v1 while serving v2 a
  device refuses v1 as a downgrade and keeps `rejected v1: RollbackError` as its last
  error (found in the fleet view after every abort);
- a section missing from a device's retained state is unknown, not a failure, until the
  wave deadline, which names what is missing;
- `--waves` that shrink are refused instead of silently dropping a wave;
- a command that leaves no rollout removes the lock file it made, and a lock taken on a
  file removed meanwhile is taken again on the new one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ota.rollout import (
    DeviceRecord,
    DeviceState,
    RolloutUsageError,
    Target,
    abort_check,
    abort_wait_why,
    classify,
    may_redirect,
    parse_duration,
    parse_waves,
)
from ota.rollout_observe import Observation
from ota.rollout_store import RolloutStore

FAM = "vibration-ae"
TARGET = Target("vibration-ae/v2.bundle", "vibration-ae", FAM, 2)


def _obs(
    versions: tuple[int, ...],
    phase: str = "committed",
    *,
    online: bool = True,
    offline_why: str = "",
    missing: tuple[str, ...] = (),
) -> Observation:
    return Observation("gw-1", "line-1", online, offline_why, {FAM: versions}, phase,
                       missing=missing)  # fmt: skip


def _rec(before: int = 1) -> DeviceRecord:
    return DeviceRecord("gw-1", 1, before, None, DeviceState.DIRECTED, directed_at=100.0)


def test_abort_directs_back_only_a_device_that_no_longer_serves_the_target() -> None:
    on_target = _obs((2,))
    assert abort_check(_rec(), on_target, TARGET) == "rollback"
    assert not may_redirect(_rec(), on_target, TARGET)  # it would refuse v1 as a downgrade
    back = _obs((1,), phase="rolled_back")
    assert abort_check(_rec(), back, TARGET) == "restored"
    assert may_redirect(_rec(), back, TARGET)
    # directed but never installed (it missed the hint): no rollback, just the direction
    assert may_redirect(_rec(), _obs((1,), phase="idle"), TARGET)
    # busy installing the target: neither yet (it commits, then is rolled back)
    busy = _obs((1,), phase="downloading")
    assert abort_check(_rec(), busy, TARGET) == "wait"
    assert not may_redirect(_rec(), busy, TARGET)
    assert "busy with an update" in abort_wait_why(_rec(), busy, TARGET)
    # it served the target before the rollout: its old direction, nothing to roll back
    assert abort_check(_rec(before=2), on_target, TARGET) == "unchanged"
    assert may_redirect(_rec(before=2), on_target, TARGET)
    # offline, last seen on its previous version: directed back, but not counted restored
    gone = _obs((1,), online=False, offline_why="its status says offline")
    assert abort_check(_rec(), gone, TARGET) == "wait"
    assert may_redirect(_rec(), gone, TARGET)
    assert "offline" in abort_wait_why(_rec(), gone, TARGET)
    # a section missing: unknown, nothing done
    partial = _obs((), missing=("models",))
    assert abort_check(_rec(), partial, TARGET) == "wait"
    assert not may_redirect(_rec(), partial, TARGET)
    assert "no models" in abort_wait_why(_rec(), partial, TARGET)


@pytest.mark.parametrize("missing", [("models",), ("ota",), ("status",), ("health",)])
def test_a_missing_section_is_unknown_until_the_wave_deadline(missing: tuple[str, ...]) -> None:
    # offline by its silence and serving nothing: would fail it if it were judged
    o = _obs((), phase="?", online=False, offline_why="nothing from it", missing=missing)
    assert classify(_rec(), o, TARGET, 600.0, 200.0) == (DeviceState.DIRECTED, "")
    ok = DeviceRecord("gw-1", 1, 1, None, DeviceState.SUCCEEDED, 100.0, 150.0)
    assert classify(ok, o, TARGET, 600.0, 900.0)[0] is DeviceState.SUCCEEDED
    state, why = classify(_rec(), o, TARGET, 600.0, 700.0)
    assert state is DeviceState.FAILED
    assert why.startswith("not reporting"), why
    assert f"no retained {missing[0]}" in why, why


@pytest.mark.parametrize("waves", ["3,1,100%", "2,2,100%", "10%,5%,100%", "100%,50%", "1,100%,5"])
def test_waves_that_do_not_grow_are_refused(waves: str) -> None:
    with pytest.raises(RolloutUsageError, match="--waves"):
        parse_waves(waves)


def test_counts_and_percentages_may_interleave() -> None:
    assert len(parse_waves("2,10%,5,100%")) == 4  # compared within their kind only


def test_a_positive_duration_refuses_zero() -> None:
    assert parse_duration("0", "--soak") == 0.0
    with pytest.raises(RolloutUsageError, match="--poll '0s': must be more than 0"):
        parse_duration("0s", "--poll", positive=True)


def test_a_command_that_leaves_no_rollout_leaves_no_lock_file(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "st")
    with store.lock("line-1", "resume"):
        assert store.lock_path("line-1").exists()
    assert not store.lock_path("line-1").exists()
    assert store.holder("line-1") is None


def test_a_lock_on_a_file_removed_meanwhile_is_taken_again(tmp_path: Path) -> None:
    """A waiter that opened the lock file before its holder removed it must not hold a
    lock on the removed file while a third process locks the new one."""
    store = RolloutStore(tmp_path / "st")
    store.root.mkdir()
    stale = os.open(store.lock_path("line-1"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.unlink(store.lock_path("line-1"))  # what a holder does on release
        fd = store._acquire("line-1", store.lock_path("line-1"), deadline=0.0)
        try:
            assert os.fstat(fd).st_ino == os.stat(store.lock_path("line-1")).st_ino
            assert os.fstat(fd).st_ino != os.fstat(stale).st_ino
        finally:
            os.close(fd)
    finally:
        os.close(stale)


def test_abort_with_a_key_that_is_not_the_directors_changes_nothing(tmp_path: Path) -> None:
    """The key is checked against the director's root before the state moves to
    `aborting` (it used to move, then fail to sign, and stay there); the director's own
    online key passes the same check. Real TUF repositories."""
    from tufrig import make_repos

    from ota.fleet_mqtt import BrokerOptions
    from ota.keys import PrivateKey
    from ota.rollout import RolloutState, mark_directed, mark_directing, parse_threshold, plan
    from ota.rollout_director import check_online_key
    from ota.rollout_driver import Driver, Repos
    from ota.tufrepo import RepositoryError

    with make_repos(tmp_path) as repos:
        check_online_key(repos.director, repos.director_online)
        with pytest.raises(RepositoryError, match="cannot sign the director's targets role"):
            check_online_key(repos.director, repos.image_online)
        wrong = tmp_path / "wrong.key"
        wrong.write_bytes(PrivateKey.generate().to_pem())
        obs = {"gw-1": _obs((1,))}
        r = plan(
            rid="r-1", group="line-1", target=TARGET, previous=None, observations=obs,
            waves=parse_waves("100%"), threshold=parse_threshold("0"),
            options={"waves": "100%", "soak_s": 0.0, "max_failures": "0", "min_devices": 1,
                     "wave_deadline_s": 60.0},
            prev_entries={}, min_devices=1, now=1.0,
        )  # fmt: skip
        r = mark_directed(mark_directing(r, 1, 1.0), 1, 1.0)
        store = RolloutStore(tmp_path / "director.rollouts")
        store.save(r)
        d = Driver(store=store, broker=BrokerOptions(port=1), say=lambda _s: None,
                   repos=Repos(repos.director.path, repos.image.path, wrong))  # fmt: skip
        with pytest.raises(RepositoryError, match="is not one of its keys"):
            d.abort(r, 1.0)
        kept = store.load("line-1")
        assert kept is not None
        assert kept.state is RolloutState.RUNNING
        assert kept.to_json() == r.to_json()
