"""The endpoint's guards added after the review of issue 18: wrong tokens counted and
rate limited, a connection over every limit answered 503 at once, the token file's mode
warned about, and the checks `config validate` shares with `run`.

Real in-process Endpoint on a real socket; deadlines generous (a loaded 2-core VM)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import ServingConfig
from edge_agent.errors import ServingError
from edge_agent.profiles import load_profiles, select
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import SchedulerSet
from edge_agent.serving import http as server
from edge_agent.serving.checks import check_serving, token_warning
from edge_agent.serving.http import Endpoint
from edge_agent.serving.models import Catalogue, Scorer
from tests.agentutil import MODELS
from tests.serving_inprocess import running_endpoint

TOKEN = "guards-token-0123456789"


def _endpoint(tmp_path: Path, **kw: object) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path, TOKEN, **kw) as ep:
        yield ep


def _get(ep: Endpoint, path: str, token: str | None) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


@pytest.fixture
def slow_rate(tmp_path: Path) -> Iterator[Endpoint]:
    yield from _endpoint(tmp_path, rate_per_s=0.01)  # a burst of 1, then one in 100 s


def test_wrong_tokens_are_counted_and_rate_limited(slow_rate: Endpoint) -> None:
    assert _get(slow_rate, "/v2", "wrong-token")[0] == 401  # the one token of the burst
    status, doc = _get(slow_rate, "/v2", "wrong-token-again")
    assert status == 429, doc  # a brute force is slowed like a flood
    assert _get(slow_rate, "/v2/health/live", None)[0] == 200  # probes stay free
    status, stats = _get(slow_rate, "/v2/models/stats", TOKEN)
    assert status == 200
    endpoint = stats["endpoint"]
    assert isinstance(endpoint, dict)
    assert endpoint["unauthorized"] == 2
    assert endpoint["rate_limited"] == 1


@pytest.fixture
def one_slot(tmp_path: Path) -> Iterator[Endpoint]:
    yield from _endpoint(tmp_path, max_connections=1)


def test_a_connection_over_every_limit_gets_503_at_once(one_slot: Endpoint) -> None:
    # every refuser busy: the accepting thread answers itself, without reading on
    while one_slot._refusers.acquire(blocking=False):
        pass
    held = socket.create_connection(("127.0.0.1", one_slot.port), timeout=30)
    try:
        # the held connection has the slot once the server has accepted it, and keeps
        # it with a request in hand (its body not yet sent: an idle connection would
        # give its slot to a new one)
        auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
        held.sendall(b"GET /v2 HTTP/1.1\r\n" + auth + b"\r\n")
        assert held.recv(65536).startswith(b"HTTP/1.1 200 ")
        held.sendall(
            b"POST /v2/models/vibration-ae/infer HTTP/1.1\r\n" + auth
            + b"Content-Length: 100\r\n\r\n"
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", one_slot.port), timeout=30) as s:
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 503 "), got
        assert b"Retry-After: 1" in got
    finally:
        held.close()
    assert one_slot.counts["busy"] >= 1


def test_the_refuser_reads_a_head_for_at_most_its_total_time() -> None:
    a, b = socket.socketpair()
    try:
        done = threading.Event()

        def refuse() -> None:
            server._refuse_busy(a)
            done.set()

        threading.Thread(target=refuse, daemon=True).start()
        # a trickle, one byte well under REFUSE_READ_S apart, never ending its head
        for _ in range(int(server.REFUSE_READ_S / 0.1) * 20):
            if done.is_set():
                break
            b.sendall(b"a")
            done.wait(0.1)
        assert done.is_set(), "the refuser kept reading a trickle"
        b.settimeout(30)
        assert b.recv(65536).startswith(b"HTTP/1.1 503 ")
    finally:
        a.close()
        b.close()


def test_a_world_readable_token_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN)
    tok.chmod(0o644)
    assert token_warning(str(tok)) is not None
    cfg = ServingConfig(enabled=True, token_file=str(tok))
    assert [(k, fatal) for k, _m, fatal in check_serving(cfg)] == [("serving.token_file", False)]
    with caplog.at_level(logging.WARNING, logger="edge_agent.serving.http"):
        _bound(ServingConfig(enabled=True, port=0, token_file=str(tok))).close()
    assert any("readable by every user" in r.getMessage() for r in caplog.records)
    tok.chmod(0o640)
    assert token_warning(str(tok)) is None
    assert check_serving(cfg) == []


def _bound(cfg: ServingConfig) -> Endpoint:
    profile = select("auto", load_profiles()).profile
    catalogue = Catalogue(MODELS, profile)
    return Endpoint(cfg, catalogue, Scorer(catalogue, ModelPool(profile), SchedulerSet(profile)))


def test_a_socket_in_a_missing_directory_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = str(tmp_path / "no-such-dir" / "infer.sock")
    cfg = ServingConfig(enabled=True, socket=path)
    [(key, message, fatal)] = check_serving(cfg)
    assert (key, fatal) == ("serving.socket", True)
    assert "does not exist" in message
    assert "RuntimeDirectory" in message
    with pytest.raises(ServingError, match="does not exist"):
        _bound(cfg)
