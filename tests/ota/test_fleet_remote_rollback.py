"""`edge-ota fleet cmd rollback` against a running agent with real slots (v2 previous, v3
active): the agent rolls back through the same request path as `edge-agent rollback`,
the stream serves v2 without a restart, and the retained fleet state and birth say v2 at
once (the retained status used to name the old model until a rebirth). A malformed
request changes nothing. Real signed bundles, real mosquitto, real processes."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fleet import (
    PROFILE,
    install_committed,
    make_fleet,
    ota_cli,
    read_status,
    start_agent,
    stop_agent,
    wait_until,
    write_config,
)
from otamodels import copy_model

from edge_agent.updates.store import SlotStore
from edge_agent.updates.updater import load_root
from tests.fleet.fleetrig import ota_cli as edge_ota
from tests.mosquitto import Broker, mosquitto_available
from tests.subscriber import Subscriber

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed"),
]


def _served(sd: Path) -> Any:
    (s,) = read_status(sd).get("streams") or [{}]
    return (s.get("model") or {}).get("version")


def _retained(broker: Broker, topic: str) -> dict[str, Any] | None:
    s = Subscriber(broker.host, broker.port, topic, client_id=f"peek-{uuid.uuid4().hex[:8]}")
    try:
        s.wait_for(lambda m: len(m) > 0, 3)
        got = [m.json() for m in s.messages]
        return got[-1] if got else None
    finally:
        s.close()


def _cmd(broker: Broker, *args: str) -> tuple[int, str]:
    p = edge_ota("fleet", "cmd", "--port", str(broker.port), "--timeout", "60", *args)
    return p.returncode, p.stdout + p.stderr


def test_remote_rollback_serves_the_previous_slot_and_the_fleet_sees_it(
    tmp_path: Path,
) -> None:
    fleet = make_fleet(tmp_path / "fleet", 2)
    keys = tmp_path / "fleet" / "keys"
    v3 = tmp_path / "fleet" / "vib-v3.bundle"
    ota_cli(
        "build", str(copy_model(tmp_path / "fleet" / "model-v3", 3)), "--profiles", PROFILE,
        "--expires", "30d", "--out", str(v3),
    )  # fmt: skip
    ota_cli("sign", str(v3), "--key", str(keys / "alice.key"), "--key", str(keys / "bob.key"))
    broker = Broker(tmp_path / "broker")
    broker.start()
    cfg = write_config(tmp_path, "gw-rr", broker.port, fleet.root)
    # slots serve without a trusted root configured: no updater thread, rollback still works
    cfg.write_text("\n".join(ln for ln in cfg.read_text().splitlines() if "root_file" not in ln))
    sd = tmp_path / "gw-rr"
    store = SlotStore(sd)
    now = datetime.now(timezone.utc)
    for b in (fleet.bundle, v3):
        install_committed(store, b, load_root(fleet.root, now), PROFILE, now)
    agent = start_agent(cfg)
    try:
        wait_until(lambda: _served(sd) == 3, 60, "v3 serving", agent)

        def models_version() -> Any:
            m = _retained(broker, "edge/gw-rr/state/models")
            return m and m["streams"][0]["version"]

        wait_until(lambda: models_version() == 3, 60, "state/models v3", agent)
        rc, out = _cmd(broker, "--device", "gw-rr", "rollback", "force=yes")
        assert rc == 1
        assert "parameter 'force'" in out
        assert _served(sd) == 3  # a malformed request changed nothing
        rc, out = _cmd(broker, "--device", "gw-rr", "rollback", "reason=bad batch", "--json")
        assert rc == 0, out
        res = json.loads(out)["devices"]["gw-rr"]["replies"][0]["result"]
        assert res["rolled_back_from"] == 3
        wait_until(lambda: _served(sd) == 2, 30, "v2 serving", agent)
        assert SlotStore(sd).state.active_version == 2
        wait_until(lambda: models_version() == 2, 30, "state/models v2", agent)

        def birth_versions() -> Any:
            b = _retained(broker, "edge/gw-rr/status")
            return b and [m["version"] for m in b.get("models", [])]

        wait_until(lambda: birth_versions() == [2], 30, "retained birth v2", agent)
        row = json.loads(ota_cli("fleet", "status", "--json", "--port", str(broker.port)).stdout)[
            "devices"
        ][0]
        assert row["versions"] == {"vibration-ae": "v2"}
    finally:
        out = stop_agent(agent)
        broker.stop()
    assert "Traceback" not in out, out
