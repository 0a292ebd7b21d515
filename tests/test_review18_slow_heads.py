"""Review of issue 18: clients that send their request head a byte at a time
(slowloris) must not lock every other client out of the endpoint for as long as
they keep trickling.

Each byte resets the connection's 30 s idle timeout, and nothing bounds the time a
whole head may take, so `max_connections` such clients hold every connection slot
and the REFUSERS threads that answer 503 (their 1 s read timeout is also per byte):
every other client, the health probes included and without any token, then gets
its connection reset, for minutes. Expected: a head that has not arrived within a
bounded time is answered (408/400) and its connection closed, so the slot comes
back and other clients are served again.

Real in-process Endpoint on a real socket; generous deadlines (a loaded 2-core VM)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.serving import http
from edge_agent.serving.http import Endpoint
from tests.serving_inprocess import running_endpoint

TOKEN = "review18-token-0123456789"
MAX_CONNECTIONS = 2
TRICKLE_S = 0.3  # between bytes: under both the idle (30 s) and refuser (1 s) timeouts
WAIT_S = 75.0  # well past the 30 s idle timeout: a head deadline would have fired


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path, TOKEN, max_connections=MAX_CONNECTIONS) as ep:
        yield ep


def _trickle(port: int, stop: threading.Event) -> None:
    """A request head sent one byte at a time until `stop` (or the server closes)."""
    head = b"GET /v2/health/live HTTP/1.1\r\nX-Pad: " + b"a" * 4000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for b in head:
            if stop.wait(TRICKLE_S):
                return
            try:
                s.sendall(bytes([b]))
            except OSError:
                return  # closed by the server: what a head deadline does


def _live(port: int) -> int | None:
    """The status of GET /v2/health/live on a fresh connection; None when reset/closed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
    except OSError:
        return None
    return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else None


def test_slow_heads_do_not_lock_other_clients_out(endpoint: Endpoint) -> None:
    port = endpoint.port
    assert _live(port) == 200
    stop = threading.Event()
    slow = [
        threading.Thread(target=_trickle, args=(port, stop), daemon=True)
        for _ in range(MAX_CONNECTIONS + http.REFUSERS)
    ]
    for t in slow:
        t.start()
    try:
        time.sleep(3)  # every slot and every refuser is taken by now
        seen = []
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            status = _live(port)
            seen.append(status)
            if status == 200:
                break
            time.sleep(1)
        assert seen[-1] == 200, (
            f"{len(seen)} probes over {WAIT_S:g} s while {len(slow)} clients trickled "
            f"their heads: never served (statuses {sorted(set(map(str, seen)))})"
        )
    finally:
        stop.set()
        for t in slow:
            t.join(10)
