"""TLS, mTLS, passwords, ACL denials and refused CONNACKs against a real mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.reporting import Reporter
from tests.conftest import AUTH_USERS
from tests.mosquitto import Broker, TlsFiles
from tests.reporting.helpers import make_config, wait_until
from tests.subscriber import Subscriber

pytestmark = pytest.mark.broker


def _birth() -> dict[str, object]:
    return {"profile": "test", "models": []}


def _tls(files: TlsFiles, ca: Path) -> dict[str, object]:
    return {
        "enabled": True,
        "ca_file": str(ca),
        "cert_file": str(files.client_cert),
        "key_file": str(files.client_key),
    }


def test_tls_with_client_certificate_delivers(
    tls_broker: Broker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    sub = Subscriber(
        tls_broker.host,
        tls_broker.port,
        "edge/#",
        tls_ca=str(tls_files.ca),
        tls_cert=str(tls_files.client_cert),
        tls_key=str(tls_files.client_key),
    )
    cfg = make_config(tls_broker, tls=_tls(tls_files, tls_files.ca))
    r = Reporter(cfg, tmp_path / "state", birth=_birth)
    r.start()
    try:
        seq = r.publish_event({"event": "start", "stream": "s1"})
        assert sub.wait_for(lambda m: any(x.json().get("seq") == seq for x in m), 10)
        assert r.snapshot()["mqtt"]["connected"]
    finally:
        r.stop()
        sub.close()


def test_wrong_ca_fails_with_a_clear_error_and_keeps_the_record(
    tls_broker: Broker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    cfg = make_config(tls_broker, tls=_tls(tls_files, tls_files.other_ca))
    r = Reporter(cfg, tmp_path / "state", birth=_birth)
    r.start()
    try:
        r.publish_event({"event": "start", "stream": "s1"})
        assert wait_until(lambda: r.snapshot()["mqtt"]["last_error"] is not None)
        snap = r.snapshot()
        assert not snap["mqtt"]["connected"]
        err = snap["mqtt"]["last_error"]
        assert "TLS handshake" in err
        assert "certificate verify failed" in err
        assert "ca_file" in err
        assert snap["outbox"]["depth"] == 1
    finally:
        r.stop()


def test_missing_ca_file_is_a_config_error(tls_broker: Broker, tmp_path: Path) -> None:
    cfg = make_config(tls_broker, tls={"enabled": True, "ca_file": str(tmp_path / "nope.pem")})
    with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file: .*no such file"):
        Reporter(cfg, tmp_path / "state", birth=_birth)


def test_acl_denial_is_reported_and_counted_not_silent(
    auth_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The password comes from a systemd credential, as in production.
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(AUTH_USERS["gw-01"] + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    obs = Subscriber(
        auth_broker.host,
        auth_broker.port,
        "edge/#",
        username="observer",
        password=AUTH_USERS["observer"],
    )
    cfg = make_config(auth_broker, username="gw-01", password_credential="mqtt-password")
    r = Reporter(cfg, tmp_path / "state", birth=_birth)
    r.start()
    try:
        # The ACL lets the device publish its status ...
        assert obs.wait_for(lambda m: any(x.topic.endswith("/status") for x in m), 10)
        # ... but not events: the broker answers PUBACK 0x87.
        r.publish_event({"event": "start", "stream": "s1"})
        # paho's thread counts the denial when the PUBACK comes; the drain thread counts
        # the record rejected when it takes that ack: two threads, so wait for both
        assert wait_until(
            lambda: (m := r.snapshot()["mqtt"])["acl_denied"] >= 1 and bool(m["rejected"])
        )
        snap = r.snapshot()
        assert "0x87" in snap["mqtt"]["last_error"]
        assert "ACL" in snap["mqtt"]["last_error"]
        assert snap["mqtt"]["rejected"] == {"event": 1}
        assert not any(x.topic.endswith("/events") for x in obs.messages)
    finally:
        r.stop()
        obs.close()


def test_bad_password_is_reported_as_refused_not_connected(
    auth_broker: Broker, tmp_path: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("wrong-password\n")
    cfg = make_config(auth_broker, username="gw-01", password_file=str(pw))
    r = Reporter(cfg, tmp_path / "state", birth=_birth)
    r.start()
    try:
        assert wait_until(lambda: r.snapshot()["mqtt"]["refused"] >= 1)
        snap = r.snapshot()["mqtt"]
        assert not snap["connected"]
        assert snap["state"] in ("refused", "connecting", "disconnected")
        assert "refused the connection" in snap["last_error"]
        assert "0x86" in snap["last_error"] or "0x87" in snap["last_error"]
    finally:
        r.stop()


def test_mqtt_311_with_password_file_works(auth_broker: Broker, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(AUTH_USERS["gw-01"])
    cfg = make_config(auth_broker, username="gw-01", password_file=str(pw), protocol="3.1.1")
    r = Reporter(cfg, tmp_path / "state", birth=_birth)
    r.start()
    try:
        assert wait_until(lambda: r.snapshot()["mqtt"]["connected"])
        assert wait_until(lambda: r.snapshot()["outbox"]["depth"] == 0)  # birth acked
    finally:
        r.stop()
