"""A real agent keeps its retained fleet state current; `edge-ota fleet status` shows it;
each remote command works against it (MQTT 5 and 3.1.1). Real mosquitto, real processes."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.fleet.fleetrig import (
    AgentProc,
    agent_config,
    fleet_cmd,
    fleet_status,
    ota_cli,
    wait_until,
)
from tests.mosquitto import Broker, mosquitto_available
from tests.subscriber import Subscriber

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed"),
]

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, AgentProc, Path]]:
    d = tmp_path_factory.mktemp("fleet-agent")
    broker = Broker(d / "broker")
    broker.start()
    cfg = agent_config(d / "gw-1.toml", broker, "gw-1", group="line-3")
    agent = AgentProc(cfg, d / "gw-1.log")
    try:
        yield broker, agent, d
    finally:
        agent.stop()
        broker.stop()


def _retained(broker: Broker, flt: str, want: int) -> dict[str, Any]:
    sub = Subscriber(broker.host, broker.port, flt, client_id=f"probe-{flt.count('/')}")
    try:
        # retained, or live if the device sent them just after we subscribed
        sub.wait_for(lambda m: len({x.topic for x in m}) >= want, 60)
        return {m.topic: m.json() for m in sub.messages}
    finally:
        sub.close()


def test_retained_state_sections_validate_and_fleet_status_shows_the_device(
    rig: tuple[Broker, AgentProc, Path],
) -> None:
    broker, _agent, _ = rig
    assert wait_until(lambda: "gw-1" in {d["device"] for d in fleet_status(broker)["devices"]})
    got = _retained(broker, "edge/gw-1/state/+", 4)
    assert set(got) == {f"edge/gw-1/state/{s}" for s in ("health", "models", "ota", "alarms")}
    for topic, body in got.items():
        schema = json.loads((SCHEMAS / f"device_{topic.rsplit('/', 1)[1]}.json").read_text())
        jsonschema.validate(body, schema)
    assert got["edge/gw-1/state/models"]["streams"][0]["family"] == "vibration-ae"
    assert wait_until(lambda: fleet_status(broker)["devices"][0]["verdict"] == "OK")
    doc = fleet_status(broker, "--group", "line-3")
    row = doc["devices"][0]
    assert row["device"] == "gw-1"
    assert row["group"] == "line-3"
    assert not row["offline"]
    assert row["versions"] == {"vibration-ae": "v1"}
    assert row["ota_phase"] in ("off", "idle")
    assert doc["read"]["ended_by"] == "sentinel"
    assert fleet_status(broker, "--group", "other")["devices"] == []


def _reply(p: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def test_each_remote_command_answers_and_bad_ones_change_nothing(
    rig: tuple[Broker, AgentProc, Path],
) -> None:
    broker, _agent, d = rig
    assert wait_until(lambda: fleet_cmd(broker, "--device", "gw-1", "ping").returncode == 0)
    p = fleet_cmd(broker, "--device", "gw-1", "status", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    res = _reply(p)["devices"]["gw-1"]["replies"][0]["result"]
    assert res["streams"][0]["name"] == "line"
    assert res["verdict"] in ("OK", "DEGRADED")
    p = fleet_cmd(broker, "--device", "gw-1", "logs", "lines=5", "--json")
    lines = _reply(p)["devices"]["gw-1"]["replies"][0]["result"]["lines"]
    assert 0 < len(lines) <= 5
    p = fleet_cmd(broker, "--device", "gw-1", "support-bundle", "chunk_bytes=1024",
                  "--out", str(d / "bundles"))  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "chunk(s)" in p.stdout
    bundle = json.loads(gzip.decompress((d / "bundles" / "gw-1-support.json.gz").read_bytes()))
    assert bundle["config"]["device_id"] == "gw-1"
    assert bundle["status"]["device_id"] == "gw-1"
    assert bundle["versions"]["agent"]
    assert bundle["logs"]
    # refused, with the reason, and nothing changed
    p = fleet_cmd(broker, "--device", "gw-1", "calibrate", "stream=line")
    assert p.returncode == 1
    assert "parameter 'action'" in p.stdout  # the actions: tests/fleet/test_fleet_calibrate.py
    p = fleet_cmd(broker, "--device", "gw-1", "rollback")
    assert p.returncode == 1
    assert "refused" in p.stdout
    p = fleet_cmd(broker, "--device", "gw-1", "rollback", "force=yes")
    assert p.returncode == 1
    assert "parameter 'force'" in p.stdout
    p = fleet_cmd(broker, "--device", "gw-1", "format-disk")
    assert p.returncode == 1
    assert "unknown command 'format-disk'" in p.stdout
    p = fleet_cmd(broker, "--device", "gw-1", "logs", "lines=100000")
    assert p.returncode == 1
    assert "1..1000" in p.stdout
    p = fleet_cmd(broker, "--device", "nobody", "ping", "--timeout", "1")
    assert p.returncode == 1
    assert "no reply" in p.stdout
    row = fleet_status(broker)["devices"][0]
    assert row["versions"] == {"vibration-ae": "v1"}
    assert not row["offline"]


def test_ping_and_rebirth_refuse_unknown_parameters_and_change_nothing(
    rig: tuple[Broker, AgentProc, Path],
) -> None:
    """docs/fleet.md: unknown parameters get an error reply; `ping` and `rebirth` take
    none, and answered `ok` to anything (`ping extra=1`) before."""
    broker, _agent, _ = rig
    assert wait_until(lambda: fleet_cmd(broker, "--device", "gw-1", "ping").returncode == 0)

    def birth_seq() -> int:
        return int(_retained(broker, "edge/gw-1/status", 1)["edge/gw-1/status"]["seq"])

    before = birth_seq()
    for name in ("ping", "rebirth"):
        p = fleet_cmd(broker, "--device", "gw-1", name, "extra=1")
        assert p.returncode == 1, p.stdout + p.stderr
        assert "unknown parameter(s) ['extra']" in p.stdout, p.stdout
    assert birth_seq() == before  # the refused rebirth published nothing
    p = fleet_cmd(broker, "--device", "gw-1", "rebirth", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    seq = _reply(p)["devices"]["gw-1"]["replies"][0]["result"]["seq"]
    assert wait_until(lambda: birth_seq() == seq)
    assert seq != before


def test_group_command_and_311_fallback(rig: tuple[Broker, AgentProc, Path]) -> None:
    broker, _agent, _ = rig
    assert wait_until(lambda: fleet_cmd(broker, "--device", "gw-1", "ping").returncode == 0)
    p = fleet_cmd(broker, "--group", "line-3", "ping")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("gw-1: ok")
    p = fleet_cmd(broker, "--mqtt-protocol", "3.1.1", "--device", "gw-1", "rebirth")
    assert p.returncode == 0, p.stdout + p.stderr
    assert '"seq"' in p.stdout
    p = fleet_cmd(broker, "--device", "gw-1", "--group", "line-3", "ping")
    assert p.returncode == 2
    p = ota_cli("fleet", "watch", "--port", str(broker.port), "--interval", "0.5",
                "--count", "2")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("1 devices: 1 online") == 2


def test_alarm_state_is_retained_when_it_opens_and_when_it_closes(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    cfg = agent_config(
        tmp_path / "gw-a.toml",
        broker,
        "gw-a",
        rate_hz=100.0,
        source_extra=", block = 16, first_anomaly_s = 4.0, anomaly_duration_s = 4.0,"
        " anomaly_every_s = 600.0",
    )
    cfg.write_text(cfg.read_text().replace("block = 1, block = 16", "block = 16"))
    agent = AgentProc(cfg, tmp_path / "gw-a.log")
    sub = Subscriber(broker.host, broker.port, "edge/gw-a/state/alarms", client_id="alarms")
    try:

        def opens(m: list[Any]) -> bool:
            return any(x.json()["streams"][0]["open"] for x in m)

        assert sub.wait_for(opens, 90), (tmp_path / "gw-a.log").read_text()[-3000:]
        assert sub.wait_for(lambda m: opens(m) and not m[-1].json()["streams"][0]["open"], 90)
    finally:
        sub.close()
        agent.stop()
        broker.stop()
