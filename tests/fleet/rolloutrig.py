"""Rollout test rig: an operator's site made with the real `edge-ota` CLI (keys, an image
repository with a threshold of 2 and a director repository, both served by `edge-ota
serve`, releases v1 and v2 of the demo model) and a fleet of real `edge-agent run`
processes on that update channel, in group "line-3", against real mosquitto brokers.

Where devices start: on their bundled model (vibration-ae fp32 v1), with the director
naming the released v1 for the whole group, so a rollout has a previous direction to
go back to (a device serving the bundled v1 takes that direction as "serving it
already"). v2 carries the same weights as v1, so it passes shadow and trial everywhere
it is allowed to run.

How a device fails for a real reason: v2 is built for the x86-generic profile only; a
device configured with `profile = "rpi5"` (the others say "x86-generic") downloads it and
refuses it (ProfileMismatchError, the device's own check of the signed manifest), reported
in its retained `edge/<device>/state/ota` as `failed v2: ProfileMismatchError: ...`
(final: the device does not fetch it again).

Streams: synthetic, one-sample blocks at RATE_HZ (EDGE_ROLLOUT_RATE_HZ: 1 for the issue's
1 Hz fleet, 8 by default), the model's 64-sample window cut at every sample (`hop = 1`), so
once the first 64 samples have filled it a stream scores a window per sample and shadow
and trial take seconds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.agentutil import REPO
from tests.fleet.fleetrig import AgentProc, agent_config, fleet_status, ota_cli
from tests.mosquitto import Broker
from tests.ota.otamodels import copy_model

__all__ = [
    "FAIL_PROFILE",
    "GROUP",
    "Fleet",
    "Site",
    "broker_args",
    "device_names",
    "operator_site",
    "rows",
    "serving",
    "wave_members",
]

GROUP = "line-3"
# Every device names its profile (none is detected), so which devices refuse v2 does not
# depend on the machine the test runs on.
GOOD_PROFILE = "x86-generic"  # v2 is built for this one only
FAIL_PROFILE = "rpi5"  # a profile v2 excludes: a device configured with it refuses v2
# Few windows in shadow and trial so an update commits within seconds: the stream cuts a
# window at every sample (hop 1), and v2 has v1's weights.
SHADOW_WINDOWS = 5
TRIAL_WINDOWS = 5
# Samples per second of every agent's stream: the fleet runs at 1 Hz
# (EDGE_ROLLOUT_RATE_HZ=1: the first window then takes 64 s to fill); CI's default of 8 Hz
# fills it in 8 s and keeps the four fleet tests inside CI's time budget.
RATE_HZ = float(os.environ.get("EDGE_ROLLOUT_RATE_HZ", "8"))


def device_names(n: int) -> list[str]:
    """Sorted ids: the rollout fills its waves in this order."""
    return [f"gw-{i:03d}" for i in range(n)]


def wave_members(names: Sequence[str], waves: Sequence[str]) -> list[list[str]]:
    """The devices of each wave for cumulative sizes like ("2", "20%", "100%"), a
    percentage rounded up; only used where the test's sizes make rounding moot."""
    ordered = sorted(names)
    out: list[list[str]] = []
    done = 0
    for w in waves:
        upto = math.ceil(len(ordered) * float(w[:-1]) / 100) if w.endswith("%") else int(w)
        upto = min(max(upto, done), len(ordered))
        out.append(ordered[done:upto])
        done = upto
    return out


def broker_args(broker: Broker) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port)]


def _ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, f"{p.args}: {p.stdout}{p.stderr}"
    return p


def _serve(d: Path) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "ota", "serve", str(d), "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()
    assert " at http://" in line, line
    return p, line.rsplit(" at ", 1)[1].strip().rstrip("/")


@dataclass
class Site:
    """The operator's side: keys, repositories, their URLs, the released targets."""

    tmp: Path
    keys: Path
    image: Path
    director: Path
    image_url: str = ""
    director_url: str = ""
    targets: dict[int, str] = field(default_factory=dict)  # version -> target path

    @property
    def online_key(self) -> Path:
        return self.keys / "director-online.key"

    def repo_args(self) -> list[str]:
        """What `rollout start|resume|abort` take to sign directions."""
        return ["--director", str(self.director), "--image", str(self.image),
                "--online-key", str(self.online_key)]  # fmt: skip

    def release(self, version: int, profiles: Sequence[str]) -> str:
        model = copy_model(self.tmp / f"model-v{version}", version)
        bundle = self.tmp / f"vib-v{version}.bundle"
        _ok(ota_cli("build", str(model), "--profiles", *profiles, "--expires", "30d",
                    "--out", str(bundle)))  # fmt: skip
        out = _ok(ota_cli(
            "repo", "add", str(self.image), str(bundle), "--key", str(self.keys / "alice.key"),
            "--key", str(self.keys / "bob.key"), "--online-key", str(self.keys / "online.key"),
        )).stdout  # fmt: skip
        target: str = json.loads(out)["target"]
        self.targets[version] = target
        return target

    def direct_group(self, version: int) -> None:
        _ok(ota_cli(
            "director", "set", str(self.director), "--image", str(self.image),
            "--target", self.targets[version], "--group", GROUP,
            "--online-key", str(self.online_key),
        ))  # fmt: skip

    def ota_lines(self) -> tuple[str, ...]:
        """The `[ota]` keys of a device on this site's channel."""
        return (
            f'image_url = "{self.image_url}"',
            f'director_url = "{self.director_url}"',
            f'image_root_file = "{self.image / "metadata" / "1.root.json"}"',
            f'director_root_file = "{self.director / "metadata" / "1.root.json"}"',
            f"shadow_windows = {SHADOW_WINDOWS}",
            f"trial_windows = {TRIAL_WINDOWS}",
            # a rollout hints the group; the scheduled refresh is no fallback here
            "refresh_s = 3600",
        )


@contextmanager
def operator_site(tmp: Path) -> Iterator[Site]:
    """Keys, an image repository (root and targets threshold 2) and a director
    repository, served over HTTP; v1 and v2 released, the group directed to v1."""
    keys = tmp / "keys"
    for name in ("alice", "bob", "online", "director-root", "director-online"):
        _ok(ota_cli("keygen", "--out", str(keys), "--name", name))
    site = Site(tmp, keys, tmp / "image", tmp / "director")
    k = {n: str(keys / f"{n}.key") for n in ("alice", "bob", "online")}
    _ok(ota_cli(
        "repo", "init", str(site.image), "--kind", "image", "--root-key", k["alice"],
        "--root-key", k["bob"], "--root-threshold", "2", "--targets-key", k["alice"],
        "--targets-key", k["bob"], "--targets-threshold", "2", "--online-key", k["online"],
    ))  # fmt: skip
    _ok(ota_cli(
        "repo", "init", str(site.director), "--kind", "director", "--root-key",
        str(keys / "director-root.key"), "--online-key", str(site.online_key),
    ))  # fmt: skip
    servers: list[subprocess.Popen[str]] = []
    try:
        for d in (site.image, site.director):
            p, url = _serve(d)
            servers.append(p)
            if d == site.image:
                site.image_url = url
            else:
                site.director_url = url
        site.release(1, (GOOD_PROFILE, FAIL_PROFILE))
        site.release(2, (GOOD_PROFILE,))
        site.direct_group(1)
        yield site
    finally:
        for p in servers:
            p.terminate()
            p.communicate(timeout=10)


class Fleet:
    """Real agents, one per name, on `site`'s channel through `broker`; those in
    `failing` run with a profile v2 excludes."""

    def __init__(
        self, tmp: Path, broker: Broker, site: Site, names: Sequence[str],
        failing: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.names = list(names)
        self.failing = set(failing)
        self.agents: list[AgentProc] = []
        tmp.mkdir(parents=True, exist_ok=True)
        for d in self.names:
            cfg = agent_config(
                tmp / f"{d}.toml", broker, d, group=GROUP,
                profile=FAIL_PROFILE if d in self.failing else GOOD_PROFILE,
                ota_extra=site.ota_lines(),
                stream_extra=('variant = "fp32-onnx"', "hop = 1"), rate_hz=RATE_HZ,
            )  # fmt: skip
            self.agents.append(AgentProc(cfg, tmp / f"{d}.log"))

    def pids(self) -> list[int]:
        return [a.proc.pid for a in self.agents]

    def exited(self) -> list[str]:
        return [
            d for d, a in zip(self.names, self.agents, strict=True) if a.proc.poll() is not None
        ]

    def stop(self) -> None:
        for a in self.agents:
            if a.proc.poll() is None:
                a.proc.terminate()  # all at once: each takes its own time to drain
        for a in self.agents:
            a.stop()


def serving(broker: Broker) -> dict[str, str]:
    """device -> "v<N>" it serves, as the retained fleet state says."""
    doc = fleet_status(broker, "--group", GROUP)
    return {r["device"]: r["versions"].get("vibration-ae", "") for r in doc["devices"]}


def rows(broker: Broker) -> dict[str, dict[str, Any]]:
    doc = fleet_status(broker, "--group", GROUP)
    return {r["device"]: r for r in doc["devices"]}
