"""Review of issue 18: a connection over `max_connections` that keeps sending holds a
refuser thread (and a CPU) for as long as it likes.

docs/serving.md: connections over the limit "are answered 503 ... by up to 4 threads
at once that read the request head first (for at most 1 s in all)". After the 503 the
refuser drops "the rest of a body already sent" with `while sock.recv(): pass` under
a 0.05 s per-recv timeout and no total: a client that streams bytes keeps that loop
reading (here ~1 GB/s on loopback, a CPU busy) until it stops, and four such clients
hold every refuser. Seen by accident: a pipelining client that met a busy endpoint
had 2.98 GB swallowed in 3 s.

Expected: a refused connection is closed about REFUSE_READ_S after it came (well
within 5 s), however much it sends. Real in-process Endpoint on a real socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.serving.http import Endpoint
from tests.serving_inprocess import running_endpoint

TOKEN = "review18b-token-0123456789"
STREAM_S = 10.0  # how long the refused client keeps sending
BOUND_S = 5.0  # REFUSE_READ_S (1 s) with room for a loaded VM


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path, TOKEN, max_connections=1) as ep:
        yield ep


def _get(s: socket.socket, path: str) -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    return got


def test_a_refused_connection_that_keeps_sending_is_closed(endpoint: Endpoint) -> None:
    port = endpoint.port
    # the one slot: a keep-alive client idle after a request (closed only after 30 s)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as holder:
        assert _get(holder, "/v2/health/live").startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"POST /v2/models/skab-zsq/infer HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
            junk = b"x" * 65536
            start = time.monotonic()
            sent = 0
            closed_after: float | None = None
            while time.monotonic() - start < STREAM_S:
                try:
                    sent += s.send(junk)
                except OSError:  # reset/EPIPE, or a 2 s stall: the server stopped reading
                    closed_after = time.monotonic() - start
                    break
    held = closed_after if closed_after is not None else time.monotonic() - start
    assert held <= BOUND_S, (
        f"a connection refused for load still read after {held:.1f} s: "
        f"{sent / 1e6:.0f} MB taken and dropped (refusers read for at most 1 s, says the doc)"
    )
