"""Review of issue 18 (third pass): an answer to a HEAD request never carries content
(RFC 9110 9.3.2: the client reads no body after a HEAD response's head, whatever its
Content-Length). Today `HEAD /v2/health/live` is answered 405 with its JSON error
body on a keep-alive connection: a client reading by the RFC takes those bytes for
the start of the next answer (curl says "Excess found", and a strict client desyncs:
`{"error": ...}HTTP/1.1 200 OK` as a status line). Either status is fine (405, or 200
as for GET); the bytes after the head must be the next response.

Real in-process Endpoint on a real socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.serving.http import Endpoint
from tests.serving_inprocess import running_endpoint

TOKEN = "review18c-token-0123456789"


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path, TOKEN) as ep:
        yield ep


def _read_until(s: socket.socket, tail: bytes, deadline_s: float = 10.0) -> bytes:
    """What the server sent until `tail` is seen (or EOF, or the deadline)."""
    buf = b""
    end = time.monotonic() + deadline_s
    s.settimeout(0.5)
    while tail not in buf and time.monotonic() < end:
        try:
            got = s.recv(65536)
        except TimeoutError:
            continue
        if not got:
            break
        buf += got
    return buf


@pytest.mark.parametrize("target", ["/v2/health/live", "/v2/health/ready", "/v2/models"])
def test_a_head_answer_has_no_body_and_the_next_answer_follows(
    endpoint: Endpoint, target: str
) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as s:
        s.sendall(
            b"HEAD " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        got = _read_until(s, b'{"live": true}')
    first_head, sep, rest = got.partition(b"\r\n\r\n")
    assert sep, got
    assert first_head.startswith(b"HTTP/1.1 "), got
    # nothing between the HEAD answer's head and the next status line
    assert rest.startswith(b"HTTP/1.1 200 "), (first_head, rest[:120])
    assert rest.endswith(b'{"live": true}'), rest
