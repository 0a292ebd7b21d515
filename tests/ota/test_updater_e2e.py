"""End to end with a real mosquitto and the real CLIs: `python -m ota build/sign/publish
--serve` on the operator's side, `python -m edge_agent run` as the device; and the agent
SIGKILLed at every step of an update, restarting onto a verified model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fleet import (
    Fleet,
    make_fleet,
    ota_cli,
    read_status,
    start_agent,
    stop_agent,
    wait_until,
    write_config,
)
from otamodels import REPO

from edge_agent.updates.updater import PAUSE_ENV, PAUSE_STEPS
from tests.agentutil import run_cli
from tests.mosquitto import Broker
from tests.subscriber import Subscriber

pytestmark = pytest.mark.broker

HAPPY = ["announced", "downloading", "verifying", "validating", "shadow", "promoted", "committed"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return make_fleet(tmp_path_factory.mktemp("fleet"))


def serving(state_dir: Path) -> tuple[Any, Any]:
    st = read_status(state_dir)
    streams = st.get("streams") or [{}]
    return (st.get("ota") or {}).get("phase"), streams[0].get("model", {}).get("version")


def models_json(state_dir: Path) -> dict[str, Any]:
    p = run_cli("models", "--state-dir", str(state_dir), "--json")
    assert p.returncode == 0, p.stderr
    data: dict[str, Any] = json.loads(p.stdout)
    return data


def test_published_bundle_is_shadowed_promoted_and_committed(
    broker: Broker, fleet: Fleet, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, "gw-01", broker.port, fleet.root)
    state_dir = tmp_path / "gw-01"
    sub = Subscriber(broker.host, broker.port, "edge/gw-01/ota/state")
    agent = start_agent(cfg)
    pub = None
    try:
        wait_until(
            lambda: (read_status(state_dir).get("mqtt") or {}).get("connected"), 30, "MQTT", agent
        )
        assert serving(state_dir)[1] == 1
        pub = subprocess.Popen(
            [sys.executable, "-m", "ota", "publish", str(fleet.bundle), "--host", broker.host,
             "--port", str(broker.port), "--group", "line-1", "--serve", "0", "--serve-for", "60"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert sub.wait_for(
            lambda ms: any(m.json()["state"] in ("committed", "failed", "rejected") for m in ms),
            timeout=60,
        ), [m.json() for m in sub.messages]
        msgs = [m.json() for m in sub.on("ota/state")]
        assert [m["state"] for m in msgs] == HAPPY, msgs
        assert all(m["version"] == 2 and m["device"] == "gw-01" for m in msgs)
        assert msgs[-2]["figures"]["windows"] >= 40  # the shadow's figures come with promote
        assert msgs[-1]["slot"] == "a"
        wait_until(lambda: serving(state_dir) == ("committed", 2), 60, "status shows v2", agent)
        ota = read_status(state_dir)["ota"]
        assert [e["state"] for e in ota["events"]] == HAPPY
        assert ota["active_slot"] == "a"
        assert ota["last_result"] == "committed v2"
        assert ota["model_source"] == {"vib": "slot a"}  # live, not what served at boot
        m = models_json(state_dir)
        a = m["slots"][0]
        assert (a["role"], a["version"], a["intact"], len(a["signers"])) == ("active", 2, True, 2)
        # A technician rolls the committed update back while the agent runs: the agent's
        # one slot store (the updater's, which just committed v2) does it, live; with no
        # previous slot the bundled model serves again.
        p = run_cli("rollback", "--state-dir", str(state_dir), "--reason", "line 1 complaint")
        assert p.returncode == 0, p.stderr
        assert "applied by the running agent" in p.stdout
        wait_until(lambda: serving(state_dir)[1] == 1, 10, "bundled v1 serves again", agent)
        assert sub.wait_for(
            lambda ms: any(m.json()["state"] == "rolled_back" for m in ms), timeout=10
        )
        assert read_status(state_dir)["ota"]["active_slot"] is None
        assert read_status(state_dir)["ota"]["model_source"] == {"vib": "bundled"}
    finally:
        out = stop_agent(agent)
        if pub is not None:
            pub.terminate()
            pub.communicate(timeout=10)
        sub.close()
    assert "Traceback" not in out, out


@pytest.mark.slow
def test_sigkill_at_every_step_of_apply_restarts_onto_a_verified_model(
    broker: Broker, fleet: Fleet, tmp_path: Path
) -> None:
    for step in PAUSE_STEPS:
        device = f"gw-{step}"
        cfg = write_config(tmp_path, device, broker.port, fleet.root, local_dir=fleet.bundle.parent)
        state_dir = tmp_path / device
        ota_cli(
            "publish", str(fleet.bundle), "--host", broker.host, "--port", str(broker.port),
            "--device", device, "--url", fleet.bundle.resolve().as_uri(),
        )  # fmt: skip
        agent = start_agent(cfg, {PAUSE_ENV: step})
        marker = state_dir / "ota" / f"paused-at-{step}"
        try:
            wait_until(marker.exists, 60, f"pause at {step}", agent)
        finally:
            agent.kill()  # SIGKILL: no clean-up of any kind
            agent.communicate(timeout=10)
        # Restart without the fault: recovery, then the retained announcement again.
        agent = start_agent(cfg)
        try:
            wait_until(
                lambda sd=state_dir: serving(sd) == ("committed", 2), 60, f"v2 after {step}", agent
            )
        finally:
            out = stop_agent(agent, signal.SIGTERM)
        assert "Traceback" not in out, (step, out)
        m = models_json(state_dir)
        active = next(s for s in m["slots"] if s["role"] == "active")
        assert (active["version"], active["intact"], m["committed"]) == (2, True, True), step
        reasons = [h["reason"] for h in m["history"]]
        if step == "commit":  # committed before the kill: nothing to recover, nothing redone
            assert not any("interrupted" in r for r in reasons), (step, reasons)
            assert sum(h["phase"] == "committed" for h in m["history"]) == 1
        elif step == "download":  # downloaded, not yet verified: no slot was claimed
            assert not any("interrupted" in r for r in reasons), (step, reasons)
        else:
            assert any("interrupted" in r for r in reasons), (step, reasons)
        assert not any((state_dir / "ota" / "downloads").glob("*.bundle")), step
