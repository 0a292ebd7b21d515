"""Review of issue 18: a request body sent a byte at a time holds its connection slot
for as long as the client likes.

A request head must be whole 10 s after its first byte (HEAD_DEADLINE_S, 408), so
that "a client sending its head a byte at a time cannot hold a connection slot for
longer" (docs/serving.md). Its body has no such bound: after the head the socket's
receive timeout is the 30 s idle one, per recv, so a byte every few seconds keeps the
connection (and, with `max_connections` of them, every slot) forever: the same
slowloris the head deadline was built against, one header line later.

Expected: a body not whole within a bounded time after its head (here: well under
the 30 s idle timeout plus the head's 10 s) is answered 408 and its connection
closed, freeing the slot. Real in-process Endpoint on a real socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.serving.http import Endpoint
from tests.serving_inprocess import running_endpoint

TOKEN = "review18b-token-0123456789"
TRICKLE_S = 1.0  # between body bytes: far under the 30 s idle timeout
BOUND_S = 40.0  # the head's 10 s plus 30 s of slack for a loaded VM


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path, TOKEN, max_connections=1) as ep:
        yield ep


def test_a_body_trickled_a_byte_at_a_time_is_cut_off(endpoint: Endpoint) -> None:
    body_len = 4096
    head = (
        "POST /v2/models/skab-zsq/infer HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_len}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as s:
        s.sendall(head)
        start = time.monotonic()
        got = b""
        ended = False
        sent = 0
        while time.monotonic() - start < BOUND_S and sent < body_len - 1:
            try:
                s.sendall(b" ")
            except OSError:
                ended = True  # reset: the server gave the slot back
                break
            sent += 1
            s.settimeout(TRICKLE_S)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue  # still waiting for our body
            except OSError:
                ended = True
                break
            got += chunk
            ended = not chunk or got.startswith(b"HTTP/1.1 ")
            if ended:
                break
        held = time.monotonic() - start
    assert ended, (
        f"a body trickled a byte every {TRICKLE_S:g} s still held its connection after "
        f"{held:.0f} s ({sent} of {body_len} bytes sent): no body deadline"
    )
    if got:
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
