"""`edge-ota rollout` against a fleet of real agents (issue 17's Must show): real `edge-agent
run` processes on 1 Hz synthetic streams with distinct ids and state dirs, on a real TUF
update channel (image + director repositories served by `edge-ota serve`), real mosquitto.

- waves 2,20%,100% commit the whole fleet; `fleet status` shows every device on v2;
- three devices that refuse v2 (a profile it excludes) halt the rollout in wave 2, the
  devices of wave 3 stay on v1, `rollout status` names the three and why; `abort` brings
  the directed ones back to v1;
- the driver SIGKILLed mid-wave: `rollout resume` continues where it was and completes
  (a second `start` on the group is refused, with the driver running and after it died);
- devices on one mosquitto, the operator on another, bridged: the same rollout completes.

How many agents: EDGE_ROLLOUT_AGENTS (default 12, what CI's time budget allows; each
agent costs about 6 s of start-up on a loaded 2-core machine). The issue's run is
`EDGE_ROLLOUT_AGENTS=50 EDGE_ROLLOUT_RATE_HZ=1 pytest tests/fleet/test_rollout_fleet.py -s`
(1 Hz streams as the issue asks; CI's default is 8 Hz, see rolloutrig; about 12 min here;
wave wall times printed for docs/benchmarks.md). With 25 or more agents the halt test uses
the issue's waves 2,20%,100% (the 20% wave then holds 4 devices: the three that fail and
one that does not); with fewer, 2,50%,100%, so that wave 2 still holds them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.agentutil import REPO
from tests.fleet.fleetrig import (
    bridge_lines,
    cpu_rss,
    devices_seen,
    fleet_status,
    ota_cli,
    wait_until,
)
from tests.fleet.rolloutrig import (
    GROUP,
    Fleet,
    Site,
    broker_args,
    device_names,
    operator_site,
    rows,
    serving,
    wave_members,
)
from tests.mosquitto import Broker, mosquitto_available

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed"),
]

AGENTS = int(os.environ.get("EDGE_ROLLOUT_AGENTS", "12"))
WAVES = "2,20%,100%"
HALT_WAVES = WAVES if AGENTS >= 25 else "2,50%,100%"
# Generous for a loaded 2-core machine; each wait returns as soon as its condition holds.
FLEET_UP_S = 120 + 6 * AGENTS  # every agent OK and scoring
ROLLOUT_S = 300 + 6 * AGENTS  # a whole rollout driven in the foreground
DEADLINE = "10m"  # --wave-deadline: only a device that never answers waits this long
EXIT_HALTED = 3


@contextmanager
def running_fleet(
    tmp: Path, broker: Broker, site: Site, failing: tuple[str, ...] = (), *,
    operator: Broker | None = None,
) -> Iterator[Fleet]:  # fmt: skip
    """AGENTS real agents, every one OK, scoring (its stream cuts windows, so an update's
    shadow and trial can run) and serving v1 as the operator's broker shows them."""
    names = device_names(AGENTS)
    fleet = Fleet(tmp / "agents", broker, site, names, failing)
    seen_on = operator or broker
    try:
        up = wait_until(lambda: devices_seen(fleet_status(seen_on), "OK") == set(names), FLEET_UP_S)
        assert up, (fleet.exited(), fleet_status(seen_on)["totals"])
        assert wait_until(lambda: fleet_scoring(tmp / "agents", names), FLEET_UP_S)
        assert wait_until(lambda: set(serving(seen_on).values()) == {"v1"}, 60), serving(seen_on)
        assert sorted(serving(seen_on)) == names
        yield fleet
    finally:
        fleet.stop()


def fleet_scoring(agents_dir: Path, names: list[str]) -> bool:
    """Every agent's stream has scored a window (its own status file says so)."""
    for d in names:
        try:
            st = json.loads((agents_dir / f"state-{d}" / "status.json").read_text())
            if not st["streams"][0]["windows"]:
                return False
        except (OSError, ValueError, KeyError, IndexError):
            return False
    return True


def rollout_cmd(sub: str, site: Site, broker: Broker | None, *extra: str) -> list[str]:
    keys = site.repo_args() if sub in ("start", "resume", "abort") else [
        "--director", str(site.director)
    ]  # fmt: skip
    net = [*broker_args(broker), "--poll", "1"] if broker is not None else []
    return [sys.executable, "-m", "ota", "rollout", sub, *keys, "--group", GROUP, *net, *extra]


def rollout(
    sub: str, site: Site, broker: Broker | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    cmd = rollout_cmd(sub, site, broker, *extra)
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=ROLLOUT_S, check=False
    )


def start_args(site: Site, *extra: str, waves: str = WAVES) -> tuple[str, ...]:
    return ("--target", site.targets[2], "--waves", waves, "--wave-deadline", DEADLINE, *extra)


def status(site: Site) -> dict[str, Any]:
    p = ota_cli("rollout", "status", "--director", str(site.director), "--group", GROUP, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def wave_times(doc: dict[str, Any]) -> str:
    """One line per wave: devices, from directing to settled (every device committed or
    failed) and to done, in seconds; for docs/benchmarks.md."""
    out = []
    for w in doc["waves"]:
        t0 = w["directing_at"]
        settled = w["settled_at"] - t0 if w["settled_at"] and t0 else None
        done = w["done_at"] - t0 if w["done_at"] and t0 else None
        out.append(
            f"wave {w['index']}: {len(w['devices'])} device(s), settled "
            f"{'-' if settled is None else f'{settled:.1f} s'}, done "
            f"{'-' if done is None else f'{done:.1f} s'}"
        )
    return "\n".join(out)


def test_waves_commit_the_whole_fleet(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        with (
            operator_site(tmp_path / "site") as site,
            running_fleet(tmp_path, broker, site) as fleet,
        ):
            cpu0 = sum(cpu_rss(pid)[0] for pid in fleet.pids())
            t0 = time.monotonic()
            p = rollout("start", site, broker, *start_args(site))
            took = time.monotonic() - t0
            use = [cpu_rss(pid) for pid in fleet.pids()]
            assert p.returncode == 0, p.stdout + p.stderr
            doc = status(site)
            assert doc["state"] == "completed", doc["reason"]
            assert [len(w["devices"]) for w in doc["waves"]] == [
                len(m) for m in wave_members(device_names(AGENTS), WAVES.split(","))
            ]
            assert doc["failures"] == []
            assert {d["state"] for d in doc["devices"].values()} == {"succeeded"}
            # committed devices publish their versions as a retained message of their own
            assert wait_until(lambda: set(serving(broker).values()) == {"v2"}, 60), serving(broker)
            assert {r["ota_phase"] for r in rows(broker).values()} == {"committed"}
            rss = sorted(r / 2**20 for _, r in use)
            print(
                f"\n{AGENTS} agents, waves {WAVES}: rollout start took {took:.1f} s; agents "
                f"used {(sum(c for c, _ in use) - cpu0) / took:.2f} of a core meanwhile, RSS "
                f"median {rss[len(rss) // 2]:.0f} MB (max {rss[-1]:.0f}, sum "
                f"{sum(rss) / 1024:.1f} GB); load average {os.getloadavg()[0]:.1f}\n"
                + wave_times(doc)
            )
    finally:
        broker.stop()


def test_three_refusing_devices_halt_the_rollout_in_wave_two_and_abort_brings_it_back(
    tmp_path: Path,
) -> None:
    names = device_names(AGENTS)
    waves = wave_members(names, HALT_WAVES.split(","))
    if len(waves) < 3 or len(waves[1]) < 4:
        pytest.skip(f"{AGENTS} agents: wave 2 of {HALT_WAVES} holds fewer than 4 devices")
    # the last three of wave 2: wave 1 succeeds, the third failure crosses --max-failures 2
    # in wave 2, and wave 3 is never directed
    failing = tuple(waves[1][-3:])
    succeeding = waves[0] + [d for d in waves[1] if d not in failing]
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        with (
            operator_site(tmp_path / "site") as site,
            running_fleet(tmp_path, broker, site, failing),
        ):
            p = rollout(
                "start", site, broker, *start_args(site, "--max-failures", "2", waves=HALT_WAVES)
            )
            assert p.returncode == EXIT_HALTED, p.stdout + p.stderr
            doc = status(site)
            assert doc["state"] == "halted", doc["reason"]
            assert "halted in wave 2" in doc["reason"], doc["reason"]
            assert [w["state"] for w in doc["waves"]][::2] == ["done", "pending"]
            assert {f["device"] for f in doc["failures"]} == set(failing), doc["failures"]
            for f in doc["failures"]:
                assert f["wave"] == 2, f
                assert "ProfileMismatchError" in f["reason"], f
            text = rollout("status", site, None)
            assert text.returncode == 0, text.stderr
            for d in failing:
                assert any(d in ln and "ProfileMismatchError" in ln for ln in
                           text.stdout.splitlines()), text.stdout  # fmt: skip
            # the devices say so themselves, in their retained state/ota
            now = rows(broker)
            for d in failing:
                assert now[d]["last_error"].startswith("failed v2: ProfileMismatchError"), now[d]
            # wave 3 was never directed: it serves v1 and was never told of v2
            for d in waves[2]:
                assert now[d]["versions"] == {"vibration-ae": "v1"}, now[d]
                assert now[d]["ota_target"] is None, now[d]
            assert wait_until(lambda: all(serving(broker)[d] == "v2" for d in succeeding), 120)
            t0 = time.monotonic()
            p = rollout("abort", site, broker)
            assert p.returncode == 0, p.stdout + p.stderr
            doc = status(site)
            assert doc["state"] == "aborted", doc["reason"]
            directed = waves[0] + waves[1]
            assert {d: doc["devices"][d]["abort"]["result"] for d in directed} == dict.fromkeys(
                directed, "restored"
            ), doc["reason"]
            assert all(doc["devices"][d]["abort"] is None for d in waves[2])
            assert wait_until(lambda: set(serving(broker).values()) == {"v1"}, 120), serving(broker)
            print(
                f"\nabort: {len(succeeding)} device(s) back on v1 in {time.monotonic() - t0:.1f} s"
            )
    finally:
        broker.stop()


def _maybe_status(site: Site) -> dict[str, Any] | None:
    p = ota_cli("rollout", "status", "--director", str(site.director), "--group", GROUP, "--json")
    if p.returncode != 0:
        return None  # not planned yet
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def _mid_wave(doc: dict[str, Any] | None) -> bool:
    """A wave after the first is directed and some of its devices have not settled."""
    if doc is None or doc["state"] != "running":
        return False
    for w in doc["waves"][1:]:
        if w["state"] == "directed" and any(
            doc["devices"][d]["state"] == "directed" for d in w["devices"]
        ):
            return True
    return False


def test_driver_killed_mid_wave_is_resumed_where_it_was(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        with operator_site(tmp_path / "site") as site, running_fleet(tmp_path, broker, site):
            log = (tmp_path / "driver.log").open("w")
            driver = subprocess.Popen(
                rollout_cmd("start", site, broker, *start_args(site)),
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:
                assert wait_until(lambda: _maybe_status(site) is not None, 120, 0.2)
                # a second operator cannot drive the same group meanwhile
                second = rollout("start", site, broker, *start_args(site))
                assert second.returncode == 1, second.stdout + second.stderr
                caught = wait_until(lambda: _mid_wave(_maybe_status(site)), ROLLOUT_S, 0.2)
            finally:
                driver.send_signal(signal.SIGKILL)  # no clean-up of any kind
                driver.wait(10)
                log.close()
            assert caught, (tmp_path / "driver.log").read_text()
            before = status(site)
            assert before["state"] == "running"
            killed_in = next(w["index"] for w in before["waves"] if w["state"] != "done")
            # with its driver dead the rollout still holds the group: no new one starts
            second = rollout("start", site, broker, *start_args(site))
            assert second.returncode == 1, second.stdout + second.stderr
            print(f"\nsecond start refused: {second.stdout.strip()} {second.stderr.strip()}")
            p = rollout("resume", site, broker)
            assert p.returncode == 0, p.stdout + p.stderr
            after = status(site)
            assert after["state"] == "completed", after["reason"]
            # finished waves were not redone, the interrupted one was not directed again
            for w0, w1 in zip(before["waves"][:killed_in], after["waves"], strict=False):
                assert w1["directing_at"] == w0["directing_at"], (w0, w1)
                assert w1["directed_at"] == w0["directed_at"], (w0, w1)
            for w0, w1 in zip(before["waves"][: killed_in - 1], after["waves"], strict=False):
                assert w1["done_at"] == w0["done_at"], (w0, w1)
            directing = [e["event"] for e in after["events"] if "directing" in e["event"]]
            assert len(directing) == len(set(directing)), directing
            assert wait_until(lambda: set(serving(broker).values()) == {"v2"}, 60), serving(broker)
            print(f"driver killed in wave {killed_in}; resumed and completed\n"
                  + wave_times(after))  # fmt: skip
    finally:
        broker.stop()


def test_rollout_across_a_bridge(tmp_path: Path) -> None:
    site_broker = Broker(tmp_path / "site-broker")
    site_broker.start()
    central = Broker(tmp_path / "central", extra=bridge_lines(site_broker))
    central.start()
    try:
        with (
            operator_site(tmp_path / "site") as site,
            running_fleet(tmp_path, site_broker, site, operator=central),
        ):
            p = rollout("start", site, central, *start_args(site))
            assert p.returncode == 0, p.stdout + p.stderr
            doc = status(site)
            assert doc["state"] == "completed", doc["reason"]
            assert wait_until(lambda: set(serving(central).values()) == {"v2"}, 60), serving(
                central
            )
            print(f"\n{AGENTS} agents across a bridge, waves {WAVES}\n" + wave_times(doc))
    finally:
        central.stop()
        site_broker.stop()
