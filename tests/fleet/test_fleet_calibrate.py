"""The remote `calibrate` command against a real agent (synthetic source at 100 Hz, the
rate the model was built on: 40 windows take 7 s) through the real `edge-ota fleet cmd`
and a real mosquitto: start -> applied (file, status, retained state/models), stop keeps
the old calibration, refusals change nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentutil import run_cli
from tests.fleet.fleetrig import AgentProc, agent_config, fleet_cmd, wait_until
from tests.mosquitto import Broker, mosquitto_available
from tests.subscriber import Subscriber

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed"),
]

DEVICE = "gw-cal"
LONG = "20000"  # windows: 320k samples, 53 minutes at 100 Hz: still collecting


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path]]:
    d = tmp_path_factory.mktemp("fleet-calibrate")
    broker = Broker(d / "broker")
    broker.start()
    cfg = agent_config(
        d / f"{DEVICE}.toml",
        broker,
        DEVICE,
        rate_hz=100.0,
        # no injected anomaly: the calibration stretch is normal operation
        source_extra=", block = 16, first_anomaly_s = 100000.0",
    )
    cfg.write_text(cfg.read_text().replace("block = 1, block = 16", "block = 16"))
    agent = AgentProc(cfg, d / f"{DEVICE}.log")
    try:
        yield broker, d / f"state-{DEVICE}"
    finally:
        agent.stop()
        broker.stop()


def calibrate(broker: Broker, *args: str) -> dict[str, Any]:
    """The device's one reply: {"ok": ..., "result": ...} or {"ok": false, "error": ...}."""
    p = fleet_cmd(broker, "--device", DEVICE, "--timeout", "30", "calibrate", *args, "--json")
    replies = json.loads(p.stdout)["devices"][DEVICE]["replies"]
    if not replies:  # the agent is not connected yet
        return {"ok": False, "error": "no reply"}
    reply: dict[str, Any] = replies[0]
    assert (p.returncode == 0) == bool(reply["ok"]), p.stdout
    return reply


def started(broker: Broker, windows: str) -> dict[str, Any]:
    """Start once the stream scores (its source needs a moment after the agent starts)."""
    got: dict[str, Any] = {}

    def ok() -> bool:
        nonlocal got
        got = calibrate(broker, "action=start", f"windows={windows}")
        retry = ("its source is", "no reply")  # the agent or its source is still starting
        return bool(got["ok"]) or not any(r in got["error"] for r in retry)

    assert wait_until(ok, 90, step=1.0), got
    assert got["ok"], got
    return dict(got["result"])


def live(broker: Broker) -> dict[str, Any]:
    r = calibrate(broker, "action=status")
    assert r["ok"], r
    return dict(r["result"]["live"])


def applied_once(broker: Broker, windows: str) -> dict[str, Any]:
    res = started(broker, windows)
    assert res["started"] is True
    assert res["live"]["state"] == "collecting"
    assert res["live"]["windows"] == int(windows)
    assert wait_until(lambda: live(broker)["state"] not in ("collecting", "fitting", "applying"),
                      120, step=1.0)  # fmt: skip
    done = live(broker)
    assert done["state"] == "applied", done
    return done


def status_json(state: Path) -> dict[str, Any]:
    r = run_cli("status", "--state-dir", str(state), "--json")
    doc: dict[str, Any] = json.loads(r.stdout)["state"]  # the agent's last status.json
    return doc


def stream_calibration(state: Path) -> dict[str, Any]:
    return dict(status_json(state)["streams"][0]["calibration"])


def test_start_collects_fits_and_applies_and_status_and_state_show_it(
    rig: tuple[Broker, Path],
) -> None:
    broker, state = rig
    done = applied_once(broker, "40")
    assert done["n_windows"] == 40
    assert done["collected"] == done["needed"] == 64 + 39 * 16  # vibration-ae: window 64, hop 16
    assert done["alarms_during"] == 0
    assert done["warning"] == ""  # normal data at the model's own rate: a plausible threshold
    stored = json.loads((state / "calibration" / "line.json").read_text())
    assert stored["n_windows"] == 40
    assert stored["threshold"] == pytest.approx(done["threshold"])
    assert stored["stream"] == "line"
    # the stream now alarms on the new threshold (no config threshold here)
    assert done["threshold_in_use"] == pytest.approx(done["threshold"])
    assert wait_until(lambda: stream_calibration(state).get("created") == stored["created"])
    cal = stream_calibration(state)
    assert cal["state"] == "calibrated"
    assert cal["n_windows"] == 40
    assert cal["threshold"] == pytest.approx(stored["threshold"])
    assert status_json(state)["streams"][0]["threshold"] == pytest.approx(stored["threshold"])
    text = run_cli("status", "--state-dir", str(state)).stdout
    assert "calibrated on site: 40 windows" in text, text
    sub = Subscriber(broker.host, broker.port, f"edge/{DEVICE}/state/models", client_id="cal-m")
    try:
        assert sub.wait_for(
            lambda m: bool(m) and m[-1].json()["streams"][0]["calibration"] == "calibrated", 60
        ), [m.json() for m in sub.messages]
    finally:
        sub.close()


def test_stop_midway_keeps_the_old_calibration(rig: tuple[Broker, Path]) -> None:
    broker, state = rig
    path = state / "calibration" / "line.json"
    if not path.exists():  # run on its own: make the "old" calibration first
        applied_once(broker, "30")
    before = path.read_bytes()
    threshold = status_json(state)["streams"][0]["threshold"]
    res = started(broker, LONG)
    assert res["live"]["state"] == "collecting"
    assert wait_until(lambda: live(broker)["collected"] > 0)
    assert wait_until(
        lambda: "re-calibrating (remote):" in run_cli("status", "--state-dir", str(state)).stdout
    )
    r = calibrate(broker, "action=stop")
    assert r["ok"], r
    assert r["result"]["live"]["state"] == "stopped"
    assert 0 < r["result"]["live"]["collected"] < r["result"]["live"]["needed"]
    assert r["result"]["calibration"]["state"] == "calibrated"
    assert path.read_bytes() == before
    assert live(broker)["state"] == "stopped"
    assert wait_until(lambda: stream_calibration(state).get("live", {}).get("state") == "stopped")
    assert status_json(state)["streams"][0]["threshold"] == threshold
    again = calibrate(broker, "action=stop")
    assert not again["ok"]
    assert "no calibration in progress" in again["error"]
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), "parameter 'action'"),
        (("action=go",), "parameter 'action'"),
        (("action=start", "stream=nope"), "no stream 'nope'"),
        (("action=start", "windows=20"), "expected an integer 30..20000"),
        (("action=start", "windows=1000000"), "expected an integer 30..20000"),
        (("action=start", "windows=many"), "parameter 'windows': wrong type"),
        (("action=status", "windows=40"), "only with action=start"),
        (("action=start", "rate=9"), "unknown parameter(s) ['rate']"),
    ],
)
def test_bad_requests_get_an_error_and_change_nothing(
    rig: tuple[Broker, Path], args: tuple[str, ...], error: str
) -> None:
    broker, state = rig
    path = state / "calibration" / "line.json"
    before = path.read_bytes() if path.exists() else None
    was = live(broker)
    r = calibrate(broker, *args)
    assert not r["ok"], r
    assert error in r["error"]
    assert live(broker) == was
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_second_start_is_refused_while_one_collects(rig: tuple[Broker, Path]) -> None:
    broker, state = rig
    path = state / "calibration" / "line.json"
    before = path.read_bytes() if path.exists() else None
    started(broker, LONG)
    try:
        r = calibrate(broker, "action=start", "windows=30")
        assert not r["ok"], r
        assert "already calibrating (collecting:" in r["error"]
        assert live(broker)["windows"] == int(LONG)
    finally:
        assert calibrate(broker, "action=stop")["ok"]
    assert (path.read_bytes() if path.exists() else None) == before
