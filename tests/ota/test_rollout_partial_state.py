"""A rollout must not fail a device on a fleet state that is only partly there.

Found by trying `edge-ota rollout start --waves 1,100% --soak 40s` with real agents and
restarting mosquitto (no persistence) during the soak: the broker lost its retained
messages, each agent re-published its sections after reconnecting, and the driver's first
read caught gw-01 with its `status`, `state/health` and `state/ota` back but not yet its
`state/models`. The driver judged it "stopped serving v7 during soak (serves nothing)" and
halted the rollout, though gw-01 served v7 throughout (`fleet status` showed it a few
seconds later). docs/fleet.md promises "a lost operator connection fails nobody"; a
section that is missing says nothing about what the device serves.

Pure part only (ota/rollout.py, ota/rollout_observe.py): the messages are the ones the
agent publishes, as the driver reads them from the broker; time is passed in.
"""

from __future__ import annotations

import json
from typing import Any

from ota.rollout import (
    DeviceState,
    RolloutState,
    Target,
    advance,
    mark_directed,
    mark_directing,
    parse_threshold,
    parse_waves,
    plan,
)
from ota.rollout_observe import observe

FAM = "vibration-ae"
TARGET = Target("vibration-ae/vibration-ae-v2.bundle", "vibration-ae", FAM, 2)
T0 = 1_800_000_000.0


def msg(dev: str, section: str, body: dict[str, Any], ts: float) -> tuple[str, bytes]:
    payload = {"v": 1, "device": dev, "seq": 1, "ts": ts, **body}
    return f"edge/{dev}/{section}", json.dumps(payload).encode()


def sections(dev: str, version: int, ts: float) -> dict[str, tuple[str, bytes]]:
    """What one device keeps retained, by section."""
    return {
        "status": msg(dev, "status", {"state": "online"}, ts),
        "health": msg(dev, "state/health", {"group": "line-1", "verdict": "OK", "reasons": []}, ts),
        "models": msg(dev, "state/models", {"streams": [
            {"stream": "line", "family": FAM, "model": "m", "version": version,
             "slot": "slot a", "calibration": "none"}]}, ts),
        "ota": msg(dev, "state/ota", {"phase": "committed", "target": None,
                                      "last_result": f"committed v{version}"}, ts),
    }  # fmt: skip


def test_a_device_whose_models_section_is_not_back_yet_is_not_failed_in_its_soak() -> None:
    before = [m for d in ("a", "b") for m in sections(d, 1, T0 - 10).values()]
    r = plan(
        rid="r1", group="line-1", target=TARGET, previous=None,
        observations=observe("edge", before, T0, 900.0), waves=parse_waves("1,100%"),
        threshold=parse_threshold("0"),
        options={"waves": "1,100%", "soak_s": 60.0, "max_failures": "0", "min_devices": 1,
                 "wave_deadline_s": 600.0, "poll_s": 1.0, "offline_after_s": 900.0},
        prev_entries={}, min_devices=1, now=T0,
    )  # fmt: skip
    assert r.waves[0].devices == ["a"]
    r, _ = advance(r, {}, T0)
    r = mark_directed(mark_directing(r, 1, T0), 1, T0)
    committed = [*sections("a", 2, T0 + 5).values(), *sections("b", 1, T0 + 5).values()]
    r, _ = advance(r, observe("edge", committed, T0 + 5, 900.0), T0 + 5)
    assert r.devices["a"].state is DeviceState.SUCCEEDED  # soaking until T0 + 65

    # the broker restarted without persistence: "a" has re-sent every section but
    # state/models when the driver reads (each section is its own publish)
    a = sections("a", 2, T0 + 20)
    partial = [a["status"], a["health"], a["ota"], *sections("b", 1, T0 + 20).values()]
    r, act = advance(r, observe("edge", partial, T0 + 20, 900.0), T0 + 20)

    assert r.devices["a"].state is DeviceState.SUCCEEDED, r.devices["a"].reason
    assert r.state is RolloutState.RUNNING, (act, r.reason)
