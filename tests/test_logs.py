"""Logging modes: plain lines on a terminal, native journald records (to a real datagram
socket standing in for journald), priority-prefixed lines when journald's socket is gone."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import LoggingConfig
from edge_agent.errors import ConfigError
from edge_agent.service.logs import MSG_ANOMALY_START, fields, setup_logging, under_journal


def parse_native(data: bytes) -> dict[str, str]:
    """Decode journald's native protocol (both the `K=v` and the length-prefixed form)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            out[line.decode()] = data[nl + 9 : nl + 9 + n].decode()
            assert data[nl + 9 + n : nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return out


@pytest.fixture(autouse=True)
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "journal.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    yield path, s
    s.close()


def test_plain_lines_are_readable_with_fields() -> None:
    buf = io.StringIO()
    mode = setup_logging(LoggingConfig(level="info"), environ={}, stream=buf)
    assert mode == "plain"
    log = logging.getLogger("edge_agent.test")
    log.debug("hidden")
    log.info("anomaly on %s", "demo", extra=fields(stream="demo", model_version=3))
    (line,) = buf.getvalue().splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO edge_agent\.test: anomaly on demo "
        r"\[stream=demo model_version=3\]",
        line,
    ), line


def test_override_level_wins_and_bad_level_is_config_error() -> None:
    buf = io.StringIO()
    setup_logging(LoggingConfig(level="warning"), "debug", environ={}, stream=buf)
    logging.getLogger("edge_agent.x").debug("now visible")
    assert "DEBUG edge_agent.x: now visible" in buf.getvalue()
    with pytest.raises(ConfigError, match="log level 'loud'"):
        setup_logging(LoggingConfig(), "loud", environ={}, stream=buf)


def test_setup_twice_does_not_duplicate_lines() -> None:
    buf = io.StringIO()
    setup_logging(LoggingConfig(), environ={}, stream=buf)
    setup_logging(LoggingConfig(), environ={}, stream=buf)
    logging.getLogger("edge_agent.x").info("once")
    assert buf.getvalue().count("once") == 1


def test_journal_records_carry_structured_fields(
    journald: tuple[str, socket.socket], tmp_path: Path
) -> None:
    path, sock = journald
    with (tmp_path / "stderr").open("w") as err:
        st = os.fstat(err.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journal(env, err)
        mode = setup_logging(LoggingConfig(), environ=env, stream=err, journal_socket=path)
        assert mode == "journal"
        log = logging.getLogger("edge_agent.pipeline")
        log.warning(
            "anomaly start on %s",
            "demo",
            extra=fields(stream="demo", model_version=7, message_id=MSG_ANOMALY_START),
        )
        rec = parse_native(sock.recv(65536))
        assert rec["MESSAGE"] == "anomaly start on demo"
        assert rec["PRIORITY"] == "4"
        assert rec["STREAM"] == "demo"
        assert rec["MODEL_VERSION"] == "7"
        assert rec["MESSAGE_ID"] == MSG_ANOMALY_START
        assert rec["LOGGER"] == "edge_agent.pipeline"
        assert rec["SYSLOG_IDENTIFIER"] == "edge-agent"
        assert rec["CODE_FUNC"] == "test_journal_records_carry_structured_fields"
        try:
            raise ValueError("bad frame")
        except ValueError:
            log.exception("source crashed")
        rec = parse_native(sock.recv(65536))  # multi-line: length-prefixed form
        assert rec["MESSAGE"].startswith("source crashed\nTraceback")
        assert rec["MESSAGE"].endswith("ValueError: bad frame")
        assert rec["PRIORITY"] == "3"
        assert "STREAM" not in rec
    assert (tmp_path / "stderr").read_text() == ""  # nothing doubled on stderr


def test_terminal_is_not_the_journal(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journal(env, a)
        assert not under_journal(env, b)  # e.g. a technician's shell inheriting the env
        assert not under_journal({}, a)


def test_journal_without_socket_uses_priority_prefixes(tmp_path: Path) -> None:
    buf = io.StringIO()
    cfg = LoggingConfig(format="journal")
    mode = setup_logging(cfg, environ={}, stream=buf, journal_socket=str(tmp_path / "none"))
    assert mode == "journal-stderr"
    logging.getLogger("edge_agent.x").error("disk full", extra=fields(stream="s1"))
    assert buf.getvalue() == "<3>edge_agent.x: disk full [stream=s1]\n"


def test_journald_vanishing_falls_back_to_stderr(
    journald: tuple[str, socket.socket], tmp_path: Path
) -> None:
    path, sock = journald
    buf = io.StringIO()
    setup_logging(LoggingConfig(format="journal"), environ={}, stream=buf, journal_socket=path)
    sock.close()
    os.unlink(path)
    logging.getLogger("edge_agent.x").info("still here")
    assert buf.getvalue() == "<6>edge_agent.x: still here\n"
