"""Shared fixtures: real mosquitto brokers on free loopback ports; real agent processes
killed at the end of a test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentutil import AgentProc
from tests.mosquitto import (
    MOSQUITTO_PASSWD,
    Broker,
    TlsFiles,
    make_password_file,
    make_tls_files,
    mosquitto_available,
)


def _need_mosquitto() -> None:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (.ci/run installs it)")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A plain, anonymous broker."""
    _need_mosquitto()
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def limited_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker whose maximum packet size is 300 bytes (announced to MQTT 5 clients; a
    3.1.1 client learns it when the broker closes the connection): below the agent's
    full birth."""
    _need_mosquitto()
    b = Broker(tmp_path / "limited-broker", extra=("max_packet_size 300",))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Broker]:
    """TLS only, client certificate required (mTLS)."""
    _need_mosquitto()
    b = Broker(tmp_path / "broker", tls=tls_files, require_client_cert=True)
    b.start()
    yield b
    b.stop()


# The users and the ACL of `auth_broker`: the device may only publish its status and
# read its commands; `observer` may read everything.
AUTH_USERS = {"gw-01": "s3cret-device", "observer": "s3cret-observer"}
AUTH_ACL = """\
user gw-01
topic write edge/gw-01/status
topic read edge/gw-01/cmd/+
topic write edge/gw-01/cmd/+/reply

user observer
topic readwrite #
"""


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Broker]:
    """Password file (made by mosquitto_passwd) and an ACL file."""
    _need_mosquitto()
    if MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd is not installed")
    d = tmp_path / "broker"
    d.mkdir()
    pw = make_password_file(d / "passwd", AUTH_USERS)
    acl = d / "acl"
    acl.write_text(AUTH_ACL)
    b = Broker(d, password_file=pw, acl_file=acl)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def agents() -> Iterator[list[AgentProc]]:
    """Agents a test started (append them): any still running at its end are killed."""
    started: list[AgentProc] = []
    yield started
    for a in started:
        a.kill()
