"""The connection's socket handling without Python socket timeouts (serving/http.py):
a blocking socket whose receive timeout is the kernel's (SO_RCVTIMEO), and answers sent
without blocking, falling back to a bounded sendall when the send buffer is full.
Real in-process Endpoint on real loopback sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.serving import http
from edge_agent.serving.http import Endpoint
from tests.serving_inprocess import running_endpoint

TOKEN = "socket-calls-token-0123456789"
LIVE = b"GET /v2/health/live HTTP/1.1\r\n\r\n"
MODELS = f"GET /v2/models HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path, TOKEN, rate_per_s=1_000_000.0) as ep:
        yield ep


def test_timeval_is_never_zero_which_would_mean_no_timeout() -> None:
    assert http._TIMEVAL.unpack(http._timeval(0.0000001)) == (0, 1)
    assert http._TIMEVAL.unpack(http._timeval(2.25)) == (2, 250000)
    assert http._TIMEVAL.unpack(http._timeval(30.0)) == (30, 0)


def test_the_kernel_reads_back_the_timeout_set() -> None:
    """The struct's layout is the kernel's (a wrong size is EINVAL, a wrong layout
    another timeout)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, http._timeval(2.5))
        got = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, http._TIMEVAL.size)
    assert http._TIMEVAL.unpack(got) == (2, 500000)


def test_answers_the_send_buffer_cannot_take_at_once_arrive_whole(endpoint: Endpoint) -> None:
    """Many pipelined requests, their answers not read until all are sent, through a
    small receive buffer: the server's non-blocking send comes short and the rest
    goes by its bounded sendall, every answer intact and in order."""
    n = 12000  # answers of ~1 kB: more than a loopback send buffer grows to (4 MB)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(30)
        s.connect(("127.0.0.1", endpoint.port))
        s.sendall(MODELS * n)
        time.sleep(0.5)  # the server writes until its send buffer is full
        got = bytearray()
        while got.count(b"HTTP/1.1 ") < n or not got.endswith(b"]}"):
            chunk = s.recv(65536)
            assert chunk, f"closed after {got.count(b'HTTP/1.1 ')} answers"
            got += chunk
    answers = bytes(got).split(b"HTTP/1.1 ")[1:]
    assert len(answers) == n
    assert len({a.split(b"\r\n\r\n", 1)[1] for a in answers}) == 1
    assert all(a.startswith(b"200 OK\r\n") for a in answers)


def test_a_timed_out_head_still_gets_its_408(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head deadline now runs out as SO_RCVTIMEO's EAGAIN, not a TimeoutError."""
    monkeypatch.setattr(http, "HEAD_DEADLINE_S", 0.5)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as s:
        s.sendall(LIVE)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # and never the blank line
        t0 = time.monotonic()
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 408 "), got[:80]
    assert time.monotonic() - t0 < 20
