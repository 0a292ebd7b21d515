"""The ACL in docs/fleet.md, on a real mosquitto: the agent publishes everything it needs
and answers every remote command from the operator; a dashboard user and another device
are refused by the broker; a device reads its own OTA announcement and no other's."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.fleetrig import AgentProc, agent_config, ota_cli, wait_until
from tests.mosquitto import MOSQUITTO_PASSWD, Broker, make_password_file, mosquitto_available
from tests.subscriber import Subscriber

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(
        not mosquitto_available() or MOSQUITTO_PASSWD is None,
        reason="mosquitto and mosquitto_passwd are needed",
    ),
]

DOC = Path(__file__).resolve().parents[2] / "docs" / "fleet.md"
USERS = {"gw-1": "pw-gw-1", "gw-2": "pw-gw-2", "operator": "pw-op", "dashboard": "pw-dash"}
COMMANDS = ("ping", "rebirth", "status", "logs", "support-bundle", "rollback", "calibrate")


def doc_acl() -> str:
    """The ACL file exactly as docs/fleet.md gives it."""
    m = re.search(r"<!-- acl_file \(mosquitto\) -->\n```\n(.*?)```", DOC.read_text(), re.S)
    assert m, "docs/fleet.md lost its ACL block"
    return m.group(1)


@pytest.fixture(scope="module")
def acl_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path]]:
    d = tmp_path_factory.mktemp("fleet-acl")
    (d / "broker").mkdir()
    for user, pw in USERS.items():
        (d / f"{user}.pw").write_text(pw + "\n")
    acl = d / "broker" / "acl"
    acl.write_text(doc_acl())
    broker = Broker(
        d / "broker", password_file=make_password_file(d / "broker" / "passwd", USERS),
        acl_file=acl,
    )  # fmt: skip
    broker.start()
    cfg = agent_config(d / "gw-1.toml", broker, "gw-1", group="line-3", username="gw-1",
                       password_file=d / "gw-1.pw")  # fmt: skip
    agent = AgentProc(cfg, d / "gw-1.log")
    try:
        yield broker, d
    finally:
        agent.stop()
        broker.stop()


def _as(user: str, d: Path) -> tuple[str, ...]:
    return ("--username", user, "--password-file", str(d / f"{user}.pw"))


def _cmd(broker: Broker, d: Path, user: str, *args: str) -> tuple[int, str]:
    p = ota_cli("fleet", "cmd", "--host", broker.host, "--port", str(broker.port),
                *_as(user, d), "--timeout", "20", "--out", str(d / "out"), *args)  # fmt: skip
    return p.returncode, p.stdout + p.stderr


def test_every_command_answers_the_operator_under_the_documented_acl(
    acl_rig: tuple[Broker, Path],
) -> None:
    broker, d = acl_rig
    assert wait_until(lambda: _cmd(broker, d, "operator", "--device", "gw-1", "ping")[0] == 0)
    for name in COMMANDS:
        rc, out = _cmd(broker, d, "operator", "--device", "gw-1", name)
        assert out.startswith("gw-1: "), out
        assert "no reply" not in out, (name, out)
        assert "refused the request" not in out, (name, out)
        # answered by the agent, and refused: no previous slot; no `action` given
        if name in ("rollback", "calibrate"):
            assert rc == 1, out
        else:
            assert rc == 0, (name, out)
    p = ota_cli("fleet", "status", "--json", "--host", broker.host, "--port",
                str(broker.port), *_as("operator", d))  # fmt: skip
    doc = json.loads(p.stdout)
    row = doc["devices"][0]
    assert row["device"] == "gw-1"
    assert row["group"] == "line-3"  # state/health was allowed
    assert row["versions"] == {"vibration-ae": "v1"}  # state/models was allowed
    assert doc["read"]["ended_by"] == "sentinel"
    status = json.loads((d / "state-gw-1" / "status.json").read_text())
    assert status["mqtt"]["acl_denied"] == 0  # nothing the agent sent was refused


@pytest.mark.parametrize("intruder", ["dashboard", "gw-2"])
def test_commands_from_anyone_but_the_operator_are_refused_by_the_broker(
    acl_rig: tuple[Broker, Path], intruder: str
) -> None:
    broker, d = acl_rig
    assert wait_until(lambda: _cmd(broker, d, "operator", "--device", "gw-1", "ping")[0] == 0)
    for name in COMMANDS:
        rc, out = _cmd(broker, d, intruder, "--device", "gw-1", name)
        assert rc == 1, out
        assert "refused the request" in out, (intruder, name, out)
        assert "Not authorized" in out
    # a dashboard still reads the fleet view (the sentinel is not its to write: quiet end)
    p = ota_cli("fleet", "status", "--json", "--host", broker.host, "--port",
                str(broker.port), *_as("dashboard", d))  # fmt: skip
    doc = json.loads(p.stdout)
    assert [r["device"] for r in doc["devices"]] == ["gw-1"]


def test_a_device_reads_its_own_announcement_and_not_another_devices(
    acl_rig: tuple[Broker, Path],
) -> None:
    broker, _ = acl_rig
    own = Subscriber(broker.host, broker.port, "edge/gw-2/ota/announce", client_id="gw-2-probe",
                     username="gw-2", password=USERS["gw-2"])  # fmt: skip
    other = Subscriber(broker.host, broker.port, "edge/gw-1/ota/announce",
                       client_id="gw-2-snoop", username="gw-2", password=USERS["gw-2"])  # fmt: skip
    op = Subscriber(broker.host, broker.port, "edge/_none", client_id="op-pub",
                    username="operator", password=USERS["operator"])  # fmt: skip
    try:
        for dev in ("gw-1", "gw-2"):
            info = op.client.publish(f"edge/{dev}/ota/announce", b'{"hint": 1}', qos=1,
                                     retain=True)  # fmt: skip
            info.wait_for_publish(10)
        assert own.wait_for(lambda m: len(m) == 1, 20)
        assert own.messages[0].payload == b'{"hint": 1}'
        time.sleep(2.0)  # the positive control above arrived; the other must not
        assert other.messages == []
    finally:
        for s in (own, other, op):
            s.close()
