"""Connection slots and the token's rate, at the socket level (real in-process
Endpoint): a connection arriving when every slot is held takes the slot of one not
using it (idle without the token first, then a trickling head, then idle with the
token past a grace), never one with a request in hand; missing or wrong tokens have a
rate bucket of their own and cannot hold a slot with a trickled body; at stop, idle
connections are closed and a request in hand still gets its answer.

Deadlines are generous (a loaded 2-core VM); the take-over constants are set per test
so that nothing waits on them."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.serving import http
from edge_agent.serving.http import Endpoint
from edge_agent.serving.protocol import ProtocolError
from tests.serving_inprocess import running_endpoint

TOKEN = "slots-test-token-0123456789"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
LIVE = b"GET /v2/health/live HTTP/1.1\r\n\r\n"  # needs no token
META = b"GET /v2 HTTP/1.1\r\n" + AUTH + b"\r\n"  # needs the token
SLOTS = 2


@pytest.fixture
def endpoint(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    cfg = {"max_connections": SLOTS, **getattr(request, "param", {})}
    with running_endpoint(tmp_path, TOKEN, **cfg) as ep:
        yield ep


def _connect(ep: Endpoint) -> socket.socket:
    return socket.create_connection(("127.0.0.1", ep.port), timeout=30)


def _answer(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole response from `s`: (status, lower-case headers, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before an answer: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = s.recv(65536)
        assert chunk, "closed mid-answer"
        body += chunk
    return int(lines[0].split(" ")[1]), headers, body


def _ask(s: socket.socket, request: bytes) -> int:
    s.sendall(request)
    return _answer(s)[0]


def _closed(s: socket.socket, within: float = 10.0) -> bool:
    """The server closed `s` (end of stream or a reset) within `within` seconds."""
    s.settimeout(within)
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _settle(ep: Endpoint, phase: int, n: int = SLOTS) -> None:
    """Wait until the server has `n` connections, each in `phase` (a client may read
    its answer before the server's thread is back between requests)."""
    end = time.monotonic() + 30
    while True:
        with ep._conns_lock:
            phases = [c.phase for c in ep._conns]
        if phases == [phase] * n:
            return
        assert time.monotonic() < end, phases
        time.sleep(0.01)


def _held(ep: Endpoint, request: bytes) -> list[socket.socket]:
    """SLOTS connections, each answered `request` once (so each holds a slot), each
    between requests."""
    conns = []
    for n in range(1, SLOTS + 1):  # one by one: none waits unused (HEAD_DEADLINE_S)
        conns.append(_connect(ep))
        assert _ask(conns[-1], request) == 200
        _settle(ep, http._IDLE, n)
    return conns


def _fresh(ep: Endpoint) -> int:
    """The status a new connection's authorised request gets."""
    with _connect(ep) as s:
        return _ask(s, META)


def _slots_come_back(ep: Endpoint) -> None:
    end = time.monotonic() + 30
    while ep._slots._value < SLOTS:
        assert time.monotonic() < end, "a slot was not given back"
        time.sleep(0.02)
    assert ep._slots._value == SLOTS


def test_probe_only_keepalives_give_their_slots_to_a_token_holder(endpoint: Endpoint) -> None:
    held = _held(endpoint, LIVE)
    try:
        assert _fresh(endpoint) == 200  # at once, not after their idle timeout
        assert sum(_closed(c, within=2.0) for c in held) == 1  # one slot was enough
        assert endpoint.counts["taken_over"] == 1
    finally:
        for c in held:
            c.close()
    _slots_come_back(endpoint)


def test_a_token_holders_idle_connection_keeps_its_slot_for_the_grace_only(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _held(endpoint, META)
    try:
        monkeypatch.setattr(http, "KEEPALIVE_GRACE_S", 60.0)
        with _connect(endpoint) as s:
            s.sendall(META)
            status, headers, _ = _answer(s)
        assert status == 503  # both are clients in the middle of their work
        assert headers["retry-after"] == "1"
        monkeypatch.setattr(http, "KEEPALIVE_GRACE_S", 0.0)
        assert _fresh(endpoint) == 200
        # the longest idle one gave its slot; the other still serves
        assert _closed(held[0], within=2.0)
        assert _ask(held[1], META) == 200
    finally:
        for c in held:
            c.close()
    _slots_come_back(endpoint)


def test_a_connection_without_the_token_goes_first(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "KEEPALIVE_GRACE_S", 0.0)
    with_token, probe_only = _connect(endpoint), _connect(endpoint)
    try:
        assert _ask(with_token, META) == 200  # idle the longer of the two
        time.sleep(0.05)
        assert _ask(probe_only, LIVE) == 200
        _settle(endpoint, http._IDLE)
        assert _fresh(endpoint) == 200
        assert _closed(probe_only, within=2.0)
        assert _ask(with_token, META) == 200
    finally:
        with_token.close()
        probe_only.close()
    _slots_come_back(endpoint)


def test_a_connection_with_a_request_in_hand_is_never_taken(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "KEEPALIVE_GRACE_S", 0.0)
    monkeypatch.setattr(http, "SLOW_HEAD_S", 0.0)
    held = _held(endpoint, META)
    try:
        for c in held:  # a head whole, its body not yet sent
            c.sendall(
                b"POST /v2/models/skab-zsq/infer HTTP/1.1\r\n" + AUTH + b"Content-Length: 9\r\n\r\n"
            )
        _settle(endpoint, http._IN_REQUEST)  # the server has read both heads
        with _connect(endpoint) as s:
            s.sendall(META)
            status, headers, body = _answer(s)
        assert status == 503, body
        assert headers["retry-after"] == "1"
        assert b"too many connections" in body
        assert endpoint.counts["taken_over"] == 0
    finally:
        for c in held:
            c.close()
    _slots_come_back(endpoint)


def test_a_token_holders_trickling_head_keeps_its_slot_only_for_a_moment(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "SLOW_HEAD_S", 60.0)
    monkeypatch.setattr(http, "KEEPALIVE_GRACE_S", 60.0)
    held = [_connect(endpoint) for _ in range(SLOTS)]
    try:
        for c in held:
            assert _ask(c, META) == 200  # it sent the token once
            c.sendall(b"GET /v2 HTTP/1.1\r\n")  # then never ends its next head
        _settle(endpoint, http._IN_HEAD)
        assert _fresh(endpoint) == 503
        monkeypatch.setattr(http, "SLOW_HEAD_S", 0.1)
        time.sleep(0.2)
        assert _fresh(endpoint) == 200
        assert sum(_closed(c, within=2.0) for c in held) >= 1
    finally:
        for c in held:
            c.close()
    _slots_come_back(endpoint)


def _partial_head(c: socket.socket) -> None:
    c.sendall(b"GET /v2 HTTP/1.1\r\n")  # never ends its head


def _crlf_after_a_probe(c: socket.socket) -> None:
    assert _ask(c, LIVE) == 200
    c.sendall(b"\r\n")  # allowed between requests; starts no head


def _refused_body_trickling(c: socket.socket) -> None:
    c.sendall(b"POST /v2/models/x/infer HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc")


@pytest.mark.parametrize(
    ("hold", "phase"),
    [
        (_partial_head, http._IN_HEAD),
        (_crlf_after_a_probe, http._IN_HEAD),
        (_refused_body_trickling, http._IN_REQUEST),
    ],
)
def test_a_connection_without_the_token_is_taken_whatever_it_is_doing(
    endpoint: Endpoint,
    monkeypatch: pytest.MonkeyPatch,
    hold: Callable[[socket.socket], None],
    phase: int,
) -> None:
    # review 72x: each of these, repeated before its limit ran out, kept a tokenless
    # slot for good, and every client with the token got 503
    monkeypatch.setattr(http, "SLOW_HEAD_S", 60.0)
    monkeypatch.setattr(http, "UNAUTH_BODY_S", 60.0)
    held = [_connect(endpoint) for _ in range(SLOTS)]
    try:
        for c in held:
            hold(c)
        _settle(endpoint, phase)  # the server has read what they sent
        assert _fresh(endpoint) == 200
        assert sum(_closed(c, within=5.0) for c in held) == 1  # one slot was enough
    finally:
        for c in held:
            c.close()
    _slots_come_back(endpoint)


def test_a_just_accepted_connection_with_its_request_unread_goes_after_busy_tokenless_ones(
    endpoint: Endpoint,
) -> None:
    # a client with the token is tokenless until its first head is read: under a flood of
    # tokenless partial heads, taking its slot first closed it without an answer (review
    # 73x). Real connections and sockets; the endpoint is asked to choose between them.
    (a, a_peer), (b, b_peer) = socket.socketpair(), socket.socketpair()
    try:
        waiting = http._Connection(endpoint, a)  # just accepted: between requests
        waiting.trusted = False
        a_peer.sendall(META)  # its request sent, not read yet
        stalled = http._Connection(endpoint, b)
        stalled.trusted = False
        stalled.phase = http._IN_HEAD  # a partial head, 0.5 s old
        stalled.head_deadline = time.monotonic() + http.HEAD_DEADLINE_S - 0.5
        with endpoint._conns_lock:
            held, endpoint._conns = endpoint._conns, {waiting, stalled}
            try:
                assert endpoint._victim() is stalled
                endpoint._conns = {waiting}
                assert endpoint._victim() is waiting  # still tokenless: taken when alone
            finally:
                endpoint._conns = held
    finally:
        for s in (a, a_peer, b, b_peer):
            s.close()


def test_the_socket_peek_sees_waiting_bytes_but_not_an_end() -> None:
    a, b = socket.socketpair()
    try:
        assert not http._has_input(a)
        b.sendall(b"G")
        assert http._has_input(a)
        assert a.recv(1) == b"G"  # peeked, not taken
        b.close()
        assert not http._has_input(a)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("endpoint", [{"rate_per_s": 1.0}], indirect=True)
def test_wrong_tokens_do_not_spend_the_token_holders_rate(endpoint: Endpoint) -> None:
    wrong = b"GET /v2 HTTP/1.1\r\nAuthorization: Bearer not-the-token-at-all\r\n\r\n"
    with _connect(endpoint) as s:
        statuses = [_ask(s, wrong) for _ in range(5)]
        assert statuses[0] == 401
        assert set(statuses[1:]) == {429}  # a brute force is slowed (1/s here) ...
        s.sendall(META)
        status, _, body = _answer(s)
        assert status == 200, body  # ... and the burst of the token holders is intact
        assert _ask(s, META) == 429  # which is its own bucket, spent now
    assert endpoint.counts["unauthorized"] == 5


def test_a_body_without_the_token_cannot_hold_a_slot_by_trickling(endpoint: Endpoint) -> None:
    with _connect(endpoint) as s:
        start = time.monotonic()
        s.sendall(b"POST /v2/models/skab-zsq/infer HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{")
        for _ in range(20):  # a byte every 0.1 s: a body that would take minutes
            try:
                s.sendall(b" ")
            except OSError:
                break
            time.sleep(0.1)
        status, headers, _ = _answer(s)
        assert status == 401
        assert headers.get("connection") == "close"
        assert _closed(s)
        # read for UNAUTH_BODY_S (1 s), not BODY_DEADLINE_S (10 s)
        assert time.monotonic() - start < http.BODY_DEADLINE_S


def test_at_stop_idle_connections_close_and_a_request_in_hand_is_answered(
    endpoint: Endpoint,
) -> None:
    body = json.dumps(
        {
            "inputs": [
                {"name": "window", "datatype": "FP32", "shape": [1, 10, 8], "data": [0.5] * 80}
            ]
        }
    ).encode()
    head = (
        b"POST /v2/models/skab-zsq/infer HTTP/1.1\r\n"
        + AUTH
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    idle, busy = _connect(endpoint), _connect(endpoint)
    try:
        assert _ask(idle, META) == 200
        assert _ask(busy, head + body) == 200  # the model is loaded
        _settle(endpoint, http._IDLE)
        busy.sendall(head + body[:10])
        end = time.monotonic() + 30
        while sorted(c.phase for c in list(endpoint._conns)) != [http._IDLE, http._IN_REQUEST]:
            assert time.monotonic() < end  # its head read: a request in hand
            time.sleep(0.01)
        closing = threading.Thread(target=endpoint.close)
        closing.start()
        assert _closed(idle, within=5.0)
        with pytest.raises(ConnectionRefusedError):  # no new connections
            _connect(endpoint).close()
        busy.sendall(body[10:])
        status, headers, doc = _answer(busy)
        assert status == 200, doc
        assert headers.get("connection") == "close"
        assert _closed(busy)
        closing.join(30)
        assert not closing.is_alive()
    finally:
        idle.close()
        busy.close()


def test_only_a_refusal_for_the_clients_own_deadline_goes_without_retry_advice() -> None:
    # the scheduler says which refusals are for a deadline (DeadlineError), the scorer
    # carries that to the endpoint (ProtocolError.deadline); a full queue is not one
    from edge_agent.errors import DeadlineError, OverloadError
    from edge_agent.serving.models import _overload

    assert _overload(DeadlineError("model m: cannot score within the deadline")).deadline
    assert _overload(DeadlineError("model m: deadline passed in queue")).deadline
    assert not _overload(OverloadError("model m: 512 windows queued (limit 512)")).deadline
    assert not ProtocolError(503, "model m: its scheduler is not running", 1.0).deadline
