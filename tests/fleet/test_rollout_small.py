"""`edge-ota rollout` end to end with a few real agents: keys, an image repository
(threshold 2) and a director made with the real CLI and served by `edge-ota serve`; real
`edge-agent run` processes on that TUF channel against a real mosquitto; the rollout
drives them through the director and reads what they report (retained fleet state).

- every device good: `start --waves 1,100% --soak 2s` exits 0, `fleet status` shows the
  whole group on v2, `rollout status --json` says completed, and the director holds one
  group entry for v2 and no device entries;
- one device whose profile v2 excludes (it downloads v2 and refuses it,
  ProfileMismatchError): the rollout halts in its wave (exit 3), the device not yet
  directed stays on v1, `status` names the failing device and its reason, and `abort`
  brings the directed ones back to v1 (the good one by its own rollback).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ota.tufrepo import Repository, target_custom
from tests.agentutil import REPO
from tests.fleet.fleetrig import AgentProc, fleet_status, ota_cli, wait_until
from tests.mosquitto import Broker, mosquitto_available
from tests.ota.otamodels import copy_model

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed"),
]

GOOD = "x86-generic"  # what agents on this machine detect; v2 is built for it only
BAD = "rpi5"  # a device configured with it downloads v2 and refuses it


def _ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, f"{p.args}: {p.stdout}{p.stderr}"
    return p.stdout


@dataclass
class Site:
    tmp: Path
    keys: Path
    image: Path
    director: Path
    urls: dict[str, str] = field(default_factory=dict)
    targets: dict[int, str] = field(default_factory=dict)

    def release(self, version: int, profiles: Sequence[str]) -> None:
        model = copy_model(self.tmp / f"model-v{version}", version)
        bundle = self.tmp / f"vib-v{version}.bundle"
        _ok(ota_cli("build", str(model), "--profiles", *profiles, "--expires", "30d",
                    "--out", str(bundle)))  # fmt: skip
        out = _ok(ota_cli(
            "repo", "add", str(self.image), str(bundle), "--key", str(self.keys / "a.key"),
            "--key", str(self.keys / "b.key"), "--online-key", str(self.keys / "online.key"),
        ))  # fmt: skip
        self.targets[version] = json.loads(out)["target"]

    def repo_args(self) -> list[str]:
        return ["--director", str(self.director), "--image", str(self.image),
                "--online-key", str(self.keys / "d-online.key")]  # fmt: skip

    def director_entries(self) -> dict[str, dict[str, Any]]:
        md = Repository(self.director).targets()
        return {p: target_custom(tf) for p, tf in md.signed.targets.items()}


@contextmanager
def site(tmp: Path, group: str) -> Iterator[Site]:
    """v1 (both profiles) and v2 (x86-generic only) released; the group directed to v1,
    which its devices serve as their bundled model."""
    keys = tmp / "keys"
    for n in ("a", "b", "online", "d-root", "d-online"):
        _ok(ota_cli("keygen", "--out", str(keys), "--name", n))
    s = Site(tmp, keys, tmp / "image", tmp / "director")
    _ok(ota_cli(
        "repo", "init", str(s.image), "--kind", "image", "--root-key", str(keys / "a.key"),
        "--root-key", str(keys / "b.key"), "--root-threshold", "2",
        "--targets-key", str(keys / "a.key"), "--targets-key", str(keys / "b.key"),
        "--targets-threshold", "2", "--online-key", str(keys / "online.key"),
    ))  # fmt: skip
    _ok(ota_cli("repo", "init", str(s.director), "--kind", "director", "--root-key",
                str(keys / "d-root.key"), "--online-key", str(keys / "d-online.key")))  # fmt: skip
    servers = []
    try:
        for name, d in (("image", s.image), ("director", s.director)):
            p = subprocess.Popen(
                [sys.executable, "-m", "ota", "serve", str(d), "--port", "0"],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            servers.append(p)
            assert p.stdout is not None
            line = p.stdout.readline()
            assert " at http://" in line, line
            s.urls[name] = line.rsplit(" at ", 1)[1].strip().rstrip("/")
        s.release(1, (GOOD, BAD))
        s.release(2, (GOOD,))
        _ok(ota_cli("director", "set", str(s.director), "--image", str(s.image),
                    "--target", s.targets[1], "--group", group,
                    "--online-key", str(keys / "d-online.key")))  # fmt: skip
        yield s
    finally:
        for p in servers:
            p.terminate()
            p.communicate(timeout=10)


def agent(
    tmp: Path, s: Site, broker: Broker, device: str, *, group: str, profile: str
) -> AgentProc:
    cfg = tmp / f"{device}.toml"
    cfg.write_text("\n".join([
        f'device_id = "{device}"',
        f'state_dir = "{tmp / ("state-" + device)}"',
        f'profile = "{profile}"',
        "[mqtt]", f'host = "{broker.host}"', f"port = {broker.port}",
        "reconnect_min_s = 0.2", "reconnect_max_s = 2.0",
        "[ota]", f'group = "{group}"',
        f'image_url = "{s.urls["image"]}"', f'director_url = "{s.urls["director"]}"',
        f'image_root_file = "{s.image / "metadata" / "1.root.json"}"',
        f'director_root_file = "{s.director / "metadata" / "1.root.json"}"',
        # few windows so an update commits within seconds; the hint, not the schedule,
        # makes devices refresh. 8 Hz: the model's first window is full within seconds
        # (at 1 Hz a device directed early waited a minute for it in shadow)
        "shadow_windows = 5", "trial_windows = 5", "refresh_s = 3600",
        "[health]", "stall_after_s = 120.0", "watchdog = false",
        "[[streams]]", 'name = "line"', 'model = "vibration-ae"', 'variant = "fp32-onnx"',
        "hop = 1", 'source = {kind = "synthetic", rate_hz = 8.0, block = 1}',
    ]) + "\n")  # fmt: skip
    return AgentProc(cfg, tmp / f"{device}.log")


def serving(broker: Broker, group: str) -> dict[str, str]:
    doc = fleet_status(broker, "--group", group)
    return {r["device"]: r["versions"].get("vibration-ae", "") for r in doc["devices"]}


def rollout(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return ota_cli("rollout", *args, timeout=timeout)


@contextmanager
def fleet(
    tmp: Path, group: str, profiles: dict[str, str]
) -> Iterator[tuple[Broker, Site, list[AgentProc]]]:
    broker = Broker(tmp / "broker")
    broker.start()
    agents: list[AgentProc] = []
    try:
        with site(tmp / "site", group) as s:
            agents = [agent(tmp, s, broker, d, group=group, profile=p) for d, p in profiles.items()]
            want = dict.fromkeys(profiles, "v1")
            assert wait_until(lambda: serving(broker, group) == want, 120), serving(broker, group)
            yield broker, s, agents
    finally:
        for a in agents:
            a.stop()
        broker.stop()
    for d in profiles:
        log = (tmp / f"{d}.log").read_text()
        assert "Traceback" not in log, (d, log[-3000:])


def test_rollout_commits_a_small_fleet_wave_by_wave(tmp_path: Path) -> None:
    group = "line-7"
    devices = {"gw-1": GOOD, "gw-2": GOOD, "gw-3": GOOD}
    with fleet(tmp_path, group, devices) as (broker, s, _agents):
        p = rollout(
            "start", *s.repo_args(), "--group", group, "--target", s.targets[2],
            "--waves", "1,100%", "--soak", "2s", "--wave-deadline", "4m", "--poll", "1",
            "--host", broker.host, "--port", str(broker.port),
        )  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
        assert serving(broker, group) == dict.fromkeys(devices, "v2")
        doc = json.loads(_ok(rollout("status", "--director", str(s.director), "--group", group,
                                     "--json")))  # fmt: skip
        assert doc["state"] == "completed"
        assert doc["failures"] == []
        assert [w["devices"] for w in doc["waves"]] == [["gw-1"], ["gw-2", "gw-3"]]
        assert all(w["state"] == "done" for w in doc["waves"])
        assert {d["state"] for d in doc["devices"].values()} == {"succeeded"}
        assert doc["previous"] == {"path": s.targets[1], "version": 1}
        assert doc["driver"] is None
        # wave 2 started only after wave 1's success had soaked for 2 s
        w1, w2 = doc["waves"]
        assert w2["directed_at"] >= doc["devices"]["gw-1"]["succeeded_at"] + 2.0
        assert w1["done_at"] <= w2["directing_at"]
        t0 = doc["created_at"]
        print(
            "rollout of 3 devices: "
            + ", ".join(
                f"wave {w['index']} done at +{w['done_at'] - t0:.1f} s" for w in doc["waves"]
            )
            + f", completed at +{doc['ended_at'] - t0:.1f} s"
        )
        entries = s.director_entries()
        assert entries[s.targets[2]]["groups"] == [group]
        assert entries[s.targets[2]]["devices"] == []
        assert s.targets[1] not in entries  # the group left v1; nobody else was on it
        # a second rollout on the same target is refused, naming why
        again = rollout("start", *s.repo_args(), "--group", group, "--target", s.targets[2],
                        "--waves", "100%", "--port", str(broker.port))  # fmt: skip
        assert again.returncode == 1
        assert "already directed to" in again.stderr


def test_a_refusing_device_halts_its_wave_and_abort_brings_the_directed_back(
    tmp_path: Path,
) -> None:
    group = "line-8"
    devices = {"gw-1": GOOD, "gw-2": BAD, "gw-3": GOOD}
    with fleet(tmp_path, group, devices) as (broker, s, _agents):
        broker_opts = ["--host", broker.host, "--port", str(broker.port), "--poll", "1"]
        p = rollout(
            "start", *s.repo_args(), "--group", group, "--target", s.targets[2],
            "--waves", "2,100%", "--soak", "2s", "--wave-deadline", "4m", *broker_opts,
        )  # fmt: skip
        assert p.returncode == 3, p.stdout + p.stderr
        assert "HALTED" in p.stdout
        doc = json.loads(_ok(rollout("status", "--director", str(s.director), "--group", group,
                                     "--json")))  # fmt: skip
        assert doc["state"] == "halted"
        (fail,) = doc["failures"]
        assert fail["device"] == "gw-2"
        assert fail["wave"] == 1
        assert "ProfileMismatchError" in fail["reason"], fail
        assert doc["devices"]["gw-3"]["state"] == "pending"  # never directed
        text = _ok(rollout("status", "--director", str(s.director), "--group", group))
        assert "gw-2 (wave 1" in text
        # a halted rollout blocks another one on the group
        again = rollout("start", *s.repo_args(), "--group", group, "--target", s.targets[2],
                        "--waves", "100%", "--port", str(broker.port))  # fmt: skip
        assert again.returncode == 1
        assert "halted" in again.stderr
        # gw-1 may still be on its trial when the wave halts: abort waits for it
        p = rollout("abort", *s.repo_args(), "--group", group, "--wave-deadline", "3m",
                    *broker_opts)  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
        assert wait_until(lambda: serving(broker, group) == dict.fromkeys(devices, "v1"), 60)
        doc = json.loads(_ok(rollout("status", "--director", str(s.director), "--group", group,
                                     "--json")))  # fmt: skip
        assert doc["state"] == "aborted"
        assert {d: doc["devices"][d]["abort"]["result"] for d in ("gw-1", "gw-2")} == {
            "gw-1": "restored",
            "gw-2": "restored",
        }
        assert doc["devices"]["gw-3"]["abort"] is None
        entries = s.director_entries()
        assert s.targets[2] not in entries  # the per-device entries are gone
        assert entries[s.targets[1]]["groups"] == [group]
        _no_rollback_error_after_a_refresh(tmp_path, broker, group, ["gw-1", "gw-2"])


def _no_rollback_error_after_a_refresh(
    tmp: Path, broker: Broker, group: str, devices: list[str]
) -> None:
    """After an abort, devices brought back have no RollbackError as their last error:
    abort rolls a device back before directing it to its previous version (directed to
    v1 while serving v2 it refused v1, and kept that as its last result), and a refresh
    after the abort (a hint) finds nothing to refuse."""

    def errors() -> dict[str, str]:
        return {r["device"]: r["last_error"] for r in fleet_status(broker, "--group", group)
                ["devices"] if r["device"] in devices}  # fmt: skip

    assert not any("RollbackError" in e for e in errors().values()), errors()
    t0 = time.time()
    _ok(ota_cli("hint", "--host", broker.host, "--port", str(broker.port), "--group", group))

    def refreshed(dev: str) -> bool:
        try:
            st = json.loads((tmp / f"state-{dev}" / "status.json").read_text())
        except (OSError, ValueError):
            return False
        return float(((st.get("ota") or {}).get("channel") or {}).get("last_refresh") or 0) > t0

    assert wait_until(lambda: all(refreshed(d) for d in devices), 60)
    assert not any("RollbackError" in e for e in errors().values()), errors()


def _state(s: Site, group: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        _ok(rollout("status", "--director", str(s.director), "--group", group, "--json"))
    )
    return doc


def test_a_driver_killed_mid_wave_resumes_where_it_was_and_pause_stops_it(
    tmp_path: Path,
) -> None:
    group = "line-9"
    devices = {"gw-1": GOOD, "gw-2": GOOD}
    with fleet(tmp_path, group, devices) as (broker, s, _agents):
        opts = ["--host", broker.host, "--port", str(broker.port), "--poll", "1"]
        cmd = [sys.executable, "-m", "ota", "rollout"]
        driver = subprocess.Popen(
            [*cmd, "start", *s.repo_args(), "--group", group, "--target", s.targets[2],
             "--waves", "1,100%", "--soak", "5s", "--wave-deadline", "4m", *opts],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            state_file = s.director.parent / "director.rollouts" / f"{group}.json"

            def wave1_directed() -> bool:
                try:
                    doc = json.loads(state_file.read_text())
                except (OSError, ValueError):
                    return False
                return bool(doc["waves"][0]["state"] == "directed")

            assert wait_until(wave1_directed, 60, step=0.1)
        finally:
            driver.kill()  # SIGKILL: no clean-up of any kind
            driver.wait(10)
        before = _state(s, group)
        assert before["state"] == "running"
        assert before["driver"] is None  # the lock died with its process
        # resumed in the background, then paused from "another terminal"
        resumed = subprocess.Popen(
            [*cmd, "resume", *s.repo_args(), "--group", group, *opts],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            assert wait_until(lambda: _state(s, group)["driver"] is not None, 30, step=0.2)
            p = rollout("pause", "--director", str(s.director), "--group", group)
            assert p.returncode == 0, p.stdout + p.stderr
            out, _ = resumed.communicate(timeout=60)
        finally:
            if resumed.poll() is None:
                resumed.kill()
                resumed.communicate()
        assert resumed.returncode == 4, out
        assert _state(s, group)["state"] == "paused"
        p = rollout("resume", *s.repo_args(), "--group", group, *opts)
        assert p.returncode == 0, p.stdout + p.stderr
        after = _state(s, group)
        assert after["state"] == "completed"
        assert after["id"] == before["id"]
        # wave 1 was not directed again: the same clock, one direction in the history
        assert after["waves"][0]["directed_at"] == before["waves"][0]["directed_at"]
        directed = [e for e in after["events"] if e["event"].startswith("wave 1: directed")]
        assert len(directed) == 1
        assert serving(broker, group) == dict.fromkeys(devices, "v2")


def test_abort_from_another_terminal_stops_the_driver_and_brings_the_wave_back(
    tmp_path: Path,
) -> None:
    group = "line-6"
    devices = {"gw-1": GOOD, "gw-2": GOOD}
    with fleet(tmp_path, group, devices) as (broker, s, _agents):
        opts = ["--host", broker.host, "--port", str(broker.port), "--poll", "1"]
        driver = subprocess.Popen(
            [sys.executable, "-m", "ota", "rollout", "start", *s.repo_args(), "--group", group,
             "--target", s.targets[2], "--waves", "1,100%", "--soak", "10m",
             "--wave-deadline", "4m", *opts],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            # wave 1 committed; the driver soaks it (10 minutes) when the abort comes
            def gw1_succeeded() -> bool:
                try:  # the file, not `status`: the driver may not have planned yet
                    doc = json.loads((s.director.parent / "director.rollouts" /
                                      f"{group}.json").read_text())  # fmt: skip
                except (OSError, ValueError):
                    return False
                return bool(doc["devices"]["gw-1"]["state"] == "succeeded")

            assert wait_until(gw1_succeeded, 180), _state(s, group)
            assert _state(s, group)["driver"]["command"] == "start"
            p = rollout("abort", *s.repo_args(), "--group", group, "--wave-deadline", "3m", *opts)
            out, _ = driver.communicate(timeout=60)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.communicate()
        assert p.returncode == 0, p.stdout + p.stderr
        assert "asked it to stop" in p.stdout
        assert driver.returncode == 5, out
        doc = _state(s, group)
        assert doc["state"] == "aborted"
        assert doc["devices"]["gw-1"]["abort"]["result"] == "restored"
        assert doc["devices"]["gw-2"]["abort"] is None  # never directed
        assert wait_until(lambda: serving(broker, group) == dict.fromkeys(devices, "v1"), 60)
        _no_rollback_error_after_a_refresh(tmp_path, broker, group, ["gw-1"])
