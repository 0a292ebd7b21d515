"""The endpoint's HTTP server: HTTP/1.1 keep-alive on raw sockets, a thread per
connection, a bounded number of them.

Routes (Open Inference Protocol, REST): GET /v2/health/live, /v2/health/ready, /v2,
/v2/models (the names served; an addition), /v2/models/{name}[/versions/{v}],
/v2/models/{name}[/versions/{v}]/ready, /v2/models/stats (the statistics extension's
subset, plus the model pool), /v2/models/{name}[/versions/{v}]/stats;
POST /v2/models/{name}[/versions/{v}]/infer (JSON, or with the binary tensor data
extension).

Limits, each answered at once and never queued: a body over `max_body_kb` -> 413;
over `rate_per_s` -> 429; more than `max_inflight` requests scoring -> 503; a deadline
the model's scheduler cannot meet -> 503. Refusals for load carry Retry-After. With a
token file every route but the health probes needs `Authorization: Bearer <token>`
(401 otherwise); all but those and the statistics count against the rate limit. Wrong
or missing tokens have a bucket of their own (AUTH_FAIL_RATE): a brute force is
slowed (429) without spending the rate of the clients that hold the token. A malformed
request head is answered 400 (431 when oversized, 408 when not whole HEAD_DEADLINE_S
after its first byte) and the connection closed.

Connection slots (`max_connections`), as nginx reuses its connections: a connection
arriving when every slot is held takes the slot of one that is not using it (_victim):
first a connection that never sent the token, whatever it is doing (it can only ask
the health probes or be refused), then one whose request head is still partial
SLOW_HEAD_S after its first byte (a trickle), then one with the token idle at least
KEEPALIVE_GRACE_S (not at once: a client in a loop would lose its connection between
two requests). That connection is shut down (the client sees it closed, as after the
idle timeout IDLE_CONNECTION_S). A connection with the token and a request being read
or answered is never taken; when every slot is such, the new one gets 503 and
Retry-After.

Why not http.server: at batch 1 its per-request work (email.parser headers, a write
per header line, buffered file objects) cost as much as scoring the window. Here a
request head is one recv() and a small parser (wire.py), a response one sendall().

The server runs as a supervised component: its body accepts connections from the
listening socket (each then gets its own thread) and beats between them.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import math
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.config import ServingConfig
from edge_agent.errors import ServingError
from edge_agent.serving.checks import read_token, socket_dir_problem, token_warning
from edge_agent.serving.limits import Slots, TokenBucket
from edge_agent.serving.models import Catalogue, Scorer
from edge_agent.serving.protocol import (
    ModelSpec,
    ProtocolError,
    dumps,
    error_body,
    infer_body,
    model_metadata,
    parse_infer,
)
from edge_agent.serving.wire import MAX_HEAD, Head, parse_head, response

__all__ = ["Endpoint", "read_token"]

log = logging.getLogger(__name__)

POLL_S = 0.5  # the component beats at least this often
IDLE_CONNECTION_S = 30.0  # a keep-alive connection silent this long is closed
# When every connection slot is held, a new connection takes the slot of an idle one
# (see the module's docstring): one with the token only once it is idle this long ...
KEEPALIVE_GRACE_S = 1.0
SLOW_HEAD_S = 1.0  # ... and one whose request head is still partial this long
# The body of a request refused for its token is read (and dropped) for at most this
# long: without a token a connection cannot hold its slot with a trickled body.
UNAUTH_BODY_S = 1.0
AUTH_FAIL_RATE = 10.0  # missing or wrong tokens a second, in a bucket of their own
DRAIN_S = 2.0  # at stop: how long requests being answered are waited for (close())
# A request head must be whole this long after its first byte (the first request's:
# after accept). Without a total, a client trickling a byte at a time (slowloris)
# would hold its connection slot forever: each byte restarts a per-recv timeout.
HEAD_DEADLINE_S = 10.0
BODY_DEADLINE_S = 10.0  # ... and its body this long after its head (408 after that)
DISCARD_LIMIT = 8  # an oversized body up to this many times the limit is read and dropped
REFUSERS = 4  # threads answering connections over max_connections with a 503
REFUSE_READ_S = 1.0  # how long (in all) such a connection may take to send its head
REFUSE_DRAIN_MAX = 1 << 20  # and the most of its body read and dropped after the 503
LINGER_S = 0.5  # after a closing answer: how long unread input is still read and dropped
RECV = 65536
# A client whose next request came within this long of our answer is waited for by
# polling its socket (up to this long again) instead of sleeping in recv: on a VM whose
# idle CPUs halt, a sleeping thread's wake-up costs ~40 us, a quarter of a batch-1
# request's round trip. Bounded, and only while no other request is scoring.
BUSY_POLL_S = 0.0002
# The connection threads all run on one CPU (the last the process may use). They take
# turns on one GIL anyway; spread over CPUs, every hand-over of it between them wakes a
# thread on another CPU: at saturation (4 clients, 2 CPUs) batch-1 throughput went
# from 3,300-5,500 (bimodal, by where the threads happened to run) to 5,600-6,600.
SHARE_CPU = True
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Server metadata's extensions, named as Triton names them. Not "statistics": ours is
# a subset (counts, no inference_stats durations) a client could not rely on.
EXTENSIONS = ["binary_tensor_data"]


class _Loop(Protocol):  # service.supervisor.Loop
    stop: threading.Event

    def beat(self) -> None: ...


class _ClientGoneError(Exception):
    """The client closed its side (or went silent) before a request was whole."""


# A connection's phase, for the choice of the one whose slot a new connection takes
_IDLE, _IN_HEAD, _IN_REQUEST = 0, 1, 2  # between requests; head partly read; request in hand


def _refuse_busy(sock: socket.socket) -> bool:
    """A 503 for a connection over the limit, after reading its request head (and what
    of a body is already there) so that closing does not reset the connection. True if
    the answer was sent."""
    body = error_body("too many connections to the inference endpoint; try again shortly")
    sent = False
    with contextlib.suppress(OSError):
        end = time.monotonic() + REFUSE_READ_S  # in all, not per recv: a trickle ends too
        got = b""
        while b"\r\n\r\n" not in got and len(got) < RECV:
            left = end - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(RECV)
            except TimeoutError:
                break  # answered all the same: the client may still read it
            if not chunk:
                break
            got += chunk
        sock.settimeout(REFUSE_READ_S)
        sock.sendall(response(503, body, headers={"Retry-After": "1"}, close=True))
        sent = True
        sock.settimeout(0.05)
        end, dropped = time.monotonic() + REFUSE_READ_S, 0
        with contextlib.suppress(OSError):
            # the rest of a body already sent, bounded: a client that keeps sending
            # must not hold a refuser (and a CPU) for as long as it likes
            while time.monotonic() < end and dropped < REFUSE_DRAIN_MAX:
                chunk = sock.recv(RECV)
                if not chunk:
                    break
                dropped += len(chunk)
    return sent


_BUSY = response(
    503,
    error_body("too many connections to the inference endpoint; try again shortly"),
    headers={"Retry-After": "1"},
    close=True,
)


def _refuse_at_once(sock: socket.socket) -> None:
    """A 503 for a connection over the limit while every refuser is busy, from the
    accepting thread, which must not wait: what of the request is there already is
    read, the answer written without blocking and the socket closed. A client whose
    request arrives after that may see a reset instead of the answer."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while sock.recv(RECV):
                pass
        sock.send(_BUSY)  # a few hundred bytes: fits an empty send buffer
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def _model_stats(variant: str, version: int, scheds: dict[str, Any]) -> dict[str, Any]:
    sn = scheds.get(variant, {})
    return {
        "name": variant,
        "version": str(version),
        "inference_count": sn.get("windows", 0),
        "execution_count": sn.get("batches", 0),
    }


def _listen(cfg: ServingConfig) -> socket.socket:
    """The bound, listening socket of `cfg` (OSError when it cannot be)."""
    if cfg.socket:
        if why := socket_dir_problem(cfg.socket):
            raise ServingError(why)
        _clear_stale_socket(cfg.socket)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(cfg.socket)
            os.chmod(cfg.socket, cfg.socket_mode)
        except OSError:
            s.close()
            raise
    else:
        family, kind, proto, _name, addr = socket.getaddrinfo(
            cfg.host, cfg.port, type=socket.SOCK_STREAM
        )[0]
        s = socket.socket(family, kind, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
        except OSError:
            s.close()
            raise
    s.listen(64)
    s.settimeout(POLL_S)
    return s


class Endpoint:
    """The bound server (construct, then run(loop) as a supervised component; close()).
    Raises ServingError when the address cannot be bound or the token file read (the
    config already refused a bind it does not allow: ServingConfig)."""

    def __init__(
        self,
        cfg: ServingConfig,
        catalogue: Catalogue,
        scorer: Scorer,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.cfg = cfg
        self.catalogue = catalogue
        self.scorer = scorer
        self.ready = ready
        self.token = read_token(cfg.token_file)
        self._token_bytes = None if self.token is None else self.token.encode()
        if warn := token_warning(cfg.token_file):
            log.warning("%s", warn)
        self.rate = TokenBucket(cfg.rate_per_s, max(1.0, cfg.rate_per_s))
        fail_rate = min(cfg.rate_per_s, AUTH_FAIL_RATE)
        self.auth_failures = TokenBucket(fail_rate, max(1.0, fail_rate))
        self.inflight = Slots(cfg.max_inflight)
        self.counts: dict[str, int] = {
            "requests": 0,
            "scored": 0,
            "rate_limited": 0,
            "busy": 0,
            "errors": 0,
            "unauthorized": 0,  # requests with a missing or wrong token (401)
            "taken_over": 0,  # idle connections closed to give their slot to a new one
        }
        self._counts_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(cfg.max_connections)
        self._refusers = threading.BoundedSemaphore(REFUSERS)
        # the connections holding a slot; their phases and slots change under the lock
        self._conns: set[_Connection] = set()
        self._conns_lock = threading.Lock()
        self.stopping = False  # the agent stops: no new requests, answers close
        self.polling = threading.Lock()  # held by the one connection busy-polling
        self.cpu = _connection_cpu()
        # the process's CPUs: a connection thread takes them back while a model loads
        self.all_cpus = os.sched_getaffinity(0) if self.cpu is not None else None
        try:
            self._sock = _listen(cfg)
        except OSError as e:
            where = cfg.socket or f"{cfg.host}:{cfg.port}"
            raise ServingError(f"[serving] cannot listen on {where}: {e.strerror or e}") from e
        self._closed = False
        self._port: int | None = None
        log.info("inference endpoint (Open Inference Protocol) on %s", self.address)

    @property
    def address(self) -> str:
        if self.cfg.socket:
            return f"unix:{self.cfg.socket}"
        return f"http://{self.cfg.host}:{self.port}"

    @property
    def port(self) -> int:
        """The TCP port listened on (0 on a unix socket); `port = 0` in tests picks one.
        Still known once the socket is closed."""
        if self._port is None:
            addr = self._sock.getsockname()
            self._port = int(addr[1]) if isinstance(addr, tuple) else 0
        return self._port

    def stats(self) -> dict[str, Any]:
        """GET /v2/models/stats: the statistics extension's subset for each loaded model,
        plus the model pool (budget, measured charges, evictions), this endpoint's
        request counts and each model's scheduler (batches, refusals, and how long the
        real-time streams' windows waited in its queue)."""
        scheds = {s.name: s.snapshot() for s in self.scorer.schedulers.all()}
        pool = self.scorer.pool.snapshot()
        models = [_model_stats(m["model"], m["version"], scheds) for m in pool["models"]]
        with self._counts_lock:
            counts = dict(self.counts)
        return {
            "model_stats": models,
            "pool": pool,
            "endpoint": counts,
            "schedulers": sorted(scheds.values(), key=lambda sn: str(sn["model"])),
        }

    def model_stats(self, spec: ModelSpec) -> dict[str, Any]:
        """GET /v2/models/{name}/stats: the same subset for the variant `spec` serves
        (counts 0 while it is not loaded), as tritonclient's get_inference_statistics
        reads it."""
        scheds = {s.name: s.snapshot() for s in self.scorer.schedulers.all()}
        entry = _model_stats(spec.variant, spec.version, scheds)
        entry["name"] = spec.name  # as addressed (a family or the variant)
        return {"model_stats": [entry]}

    def count(self, what: str) -> None:
        with self._counts_lock:
            self.counts[what] += 1

    def run(self, loop: _Loop) -> None:
        """The supervised body: accept connections until the agent stops (then stop
        serving: see stop_serving)."""
        while not loop.stop.is_set() and not self._closed:
            loop.beat()
            try:
                conn, _addr = self._sock.accept()  # waits at most POLL_S
            except TimeoutError:
                continue
            except OSError:
                if self._closed or self.stopping:
                    return
                raise  # the supervisor restarts the body
            self._admit(conn)
        if loop.stop.is_set():
            self.stop_serving()

    def _admit(self, conn: socket.socket) -> None:
        """A thread for `conn` while there are slots, or the slot of a connection not
        using its own (_victim); beyond them a 503 from one of at most REFUSERS
        short-lived threads (which read the request first, so the client sees the
        answer rather than a reset), or a close when those are busy too."""
        c = _Connection(self, conn)
        undo: Callable[[], None]
        if self._take_slot(c):
            t = threading.Thread(target=self._serve, args=(c,), name="serving-conn", daemon=True)
            undo = functools.partial(self._give_slot, c)
        elif self._refusers.acquire(blocking=False):
            t = threading.Thread(
                target=self._refuse, args=(conn,), name="serving-refuse", daemon=True
            )
            undo = self._refusers.release
        else:
            self.count("busy")  # before the answer: a client that has read it sees the count
            _refuse_at_once(conn)
            return
        try:
            t.start()
        except BaseException:
            undo()
            conn.close()
            raise

    def _take_slot(self, c: _Connection) -> bool:
        """A slot for `c`: a free one, or the slot of the connection _victim names,
        which is shut down (its thread ends without giving the slot back)."""
        with self._conns_lock:
            if self.stopping:
                return False
            if not self._slots.acquire(blocking=False):
                victim = self._victim()
                if victim is None:
                    return False
                self._shut(victim)
                self.count("taken_over")
            self._conns.add(c)
            return True

    def _give_slot(self, c: _Connection) -> None:
        """`c`'s slot back, unless a new connection took it over (_take_slot)."""
        with self._conns_lock:
            self._conns.discard(c)
            if not c.taken:
                self._slots.release()

    def _shut(self, c: _Connection) -> None:
        """Take `c`'s slot (under _conns_lock): shut its socket down, which ends its
        thread's wait for a request (the thread closes the socket: only it may)."""
        c.taken = True
        self._conns.discard(c)
        with contextlib.suppress(OSError):
            c.sock.shutdown(socket.SHUT_RDWR)

    def _victim(self) -> _Connection | None:
        """The connection whose slot a new one takes when every slot is held (under
        _conns_lock), or None: in this order, one that never sent the token, in any
        phase (between requests with nothing waiting first, then with a request partly
        read or in hand, then between requests with a request waiting in its socket; the
        longest since its last answer or its accept first), one with the token whose request head
        is still partial SLOW_HEAD_S after its first byte (the oldest first), one with the
        token idle at least KEEPALIVE_GRACE_S (the longest idle first). One with the token
        between requests whose next request is already in its socket is left alone."""
        now, mono = time.perf_counter(), time.monotonic()
        ranked: list[tuple[int, float, _Connection]] = []
        for c in self._conns:
            phase = c.phase
            idle = now - max(c.accepted_at, c._answered_at)
            if not c.trusted:
                # Any phase: kept from its requests (refused bodies trickled in back to
                # back, stray CRLFs, heads resent before SLOW_HEAD_S), such a connection
                # held its slot for as long as it kept at it (review 72x). Between requests
                # first, then the rest, then one whose request is waiting unread: a client
                # with the token just accepted (trusted once its first head is read) goes
                # after the tokenless ones busy with theirs (review 73x).
                waiting = phase == _IDLE and _has_input(c.sock)
                ranked.append((1 if phase != _IDLE else 2 if waiting else 0, -idle, c))
            elif phase == _IDLE:
                if idle >= KEEPALIVE_GRACE_S:
                    ranked.append((4, -idle, c))
            elif phase == _IN_HEAD and c.head_deadline is not None:
                age = mono - (c.head_deadline - HEAD_DEADLINE_S)
                if age >= SLOW_HEAD_S:
                    ranked.append((3, -age, c))
        ranked.sort(key=lambda r: r[:2])
        for _rank, _age, c in ranked:
            if not c.trusted or c.phase != _IDLE or not _has_input(c.sock):
                return c
        return None

    def _serve(self, c: _Connection) -> None:
        try:
            if self.cpu is not None:
                _set_cpus(self.cpu)
            c.serve()
        finally:
            self._give_slot(c)  # before the close: _shut never meets a closed socket
            c.sock.close()

    def _refuse(self, conn: socket.socket) -> None:
        try:
            if _refuse_busy(conn):
                self.count("busy")  # a refusal for load, like a full in-flight limit
        finally:
            conn.close()
            self._refusers.release()

    def stop_serving(self) -> None:
        """The agent stops: no new connections (the listening socket is closed, a unix
        socket's file removed), the connections between requests closed, and each
        request being answered gets its answer with `Connection: close` (close() waits
        for those). Called again, it closes the connections gone idle since."""
        with self._conns_lock:
            first, self.stopping = not self.stopping, True
        if first:
            with contextlib.suppress(OSError):
                # at once: a close alone leaves it listening while run() polls it
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            if self.cfg.socket:
                with contextlib.suppress(OSError):
                    os.unlink(self.cfg.socket)
        with self._conns_lock:
            self._shed()

    def _shed(self) -> None:
        """Shut down every connection that has no request in hand (under _conns_lock)."""
        for c in [c for c in self._conns if c.phase != _IN_REQUEST]:
            self._shut(c)

    def close(self, drain_s: float = DRAIN_S) -> None:
        """Stop serving (stop_serving) and wait up to `drain_s` for the requests being
        answered. A connection still answering after that is left to the process's
        exit (its client sees the connection reset)."""
        self.stop_serving()
        self._closed = True
        end = time.monotonic() + drain_s
        while True:
            with self._conns_lock:
                self._shed()  # a connection that went idle since: its answer is out
                busy = len(self._conns)
            if not busy or time.monotonic() >= end:
                break
            time.sleep(0.02)


def _has_input(sock: socket.socket) -> bool:
    """Whether `sock` has bytes waiting to be read (not its end)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing there
        return False


def _set_cpus(cpus: set[int] | None) -> None:
    """This thread's CPU affinity (Linux; nothing when unknown or refused)."""
    if cpus is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)


def _connection_cpu() -> set[int] | None:
    """The one CPU the connection threads share (SHARE_CPU), None for no pinning: off,
    one CPU only, or a system without thread affinity."""
    if not SHARE_CPU or not hasattr(os, "sched_getaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    return {max(allowed)} if len(allowed) > 1 else None


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a process that died; refuse one still answering."""
    p = Path(path)
    if not p.exists():
        return
    if not p.is_socket():
        raise ServingError(f"[serving] socket {path}: exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            p.unlink()
            return
    raise ServingError(f"[serving] socket {path}: another process listens on it")


def _timeval_struct() -> struct.Struct:
    """SO_RCVTIMEO's struct timeval as this kernel and C library take it, by its size:
    16 bytes (64-bit; 32-bit with a 64-bit time_t, where SO_RCVTIMEO is the _NEW option)
    or 8 (32-bit time_t)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        size = len(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
    return struct.Struct("=qq" if size == 16 else "=ii")


_TIMEVAL = _timeval_struct()


def _timeval(seconds: float) -> bytes:
    """`seconds` as SO_RCVTIMEO's struct timeval (never all zero: that is no timeout)."""
    sec = int(seconds)
    usec = int((seconds - sec) * 1e6)
    return _TIMEVAL.pack(sec, usec if sec or usec else 1)


class _Connection:
    """One client connection: requests read and answered in turn (pipelined ones
    too: bytes past a request stay in the buffer for the next).

    The socket is blocking, its receive timeout the kernel's (SO_RCVTIMEO), changed
    only when a different one is due: a Python socket timeout would poll() before
    every recv and switch the descriptor's blocking mode (ioctl) at every settimeout,
    four system calls a request that cost as much as parsing its head. An answer is
    sent without blocking; only one the send buffer cannot take at once falls back to
    a sendall under the idle timeout (the same total bound as before)."""

    def __init__(self, ep: Endpoint, sock: socket.socket) -> None:
        self.ep = ep
        self.sock = sock
        self.buf = b""
        # per request
        self.head: Head | None = None
        self.body_read = False  # this request's body was read (or dropped)
        self.body_deadline = 0.0  # when its body must be in (monotonic; see _take)
        self.close = False  # close the connection after this answer
        # when the request head being read must be whole (monotonic); None: not begun
        self.head_deadline: float | None = None
        self._rcvtimeo = 0.0  # the receive timeout set on the socket (0: none yet)
        self._answered_at = -1.0  # perf_counter when the last answer was sent
        self._quick = False  # the last request came within BUSY_POLL_S of the answer before
        self._nth = 0  # the endpoint's request count at this connection's last request
        self._pollobj: select.poll | None = None  # see _poller
        # for Endpoint._victim: when accepted (perf_counter), where it is (_IDLE, ...;
        # to _IN_HEAD under the endpoint's _conns_lock), whether it sent the token once,
        # whether a new connection took its slot
        self.accepted_at = time.perf_counter()
        self.phase = _IDLE
        self.trusted = ep._token_bytes is None
        self.taken = False

    def serve(self) -> None:
        sock = self.sock
        if sock.family != socket.AF_UNIX:
            # one sendall per answer already; no Nagle wait on a pipelined second one
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking: timeouts by SO_RCVTIMEO (_recv_timeout)
        self.head_deadline = time.monotonic() + HEAD_DEADLINE_S  # the first: from accept
        ep = self.ep
        with contextlib.suppress(_ClientGoneError, OSError):  # a client gone: nobody to answer
            while not self.close and not ep.stopping:
                self.phase = _IN_HEAD if self.buf else _IDLE
                raw = self._read_head()
                if raw is None:
                    if not self.close:
                        return  # the client left, stayed silent, or lost its slot
                    break  # its head was refused: answered, then closed
                self.phase = _IN_REQUEST
                self.head_deadline = None  # the next head's starts at its first byte
                self._request(raw)
            self._linger()

    def _read_head(self) -> bytes | None:
        """The next request head (without its blank line); None when the client closed
        or stayed silent between requests, or when its head was over MAX_HEAD (answered
        431) or not whole by its deadline (answered 408; both set `close`). Raises
        _ClientGoneError when it closes mid-head."""
        seen = 0
        while True:
            if self.buf.startswith(b"\r\n"):  # stray CRLF between requests (RFC 9112 2.2)
                self.buf = self.buf.lstrip(b"\r\n")
            i = self.buf.find(b"\r\n\r\n", max(0, seen - 3))
            if 0 <= i <= MAX_HEAD:
                raw, self.buf = self.buf[:i], self.buf[i + 4 :]
                self._recv_timeout(IDLE_CONNECTION_S)  # for its body
                return raw
            if len(self.buf) > MAX_HEAD:
                self.close = True
                self._answer_error(ProtocolError(431, f"request head over {MAX_HEAD} bytes"))
                return None
            seen = len(self.buf)
            if not self._head_time_left():
                return None
            try:
                chunk = self._poll() if self._quick and not self.buf else None
                if chunk is None:
                    chunk = self.sock.recv(RECV)
            except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO ran out: EAGAIN
                if self.head_deadline is not None:
                    continue  # answered above
                chunk = b""
            if not chunk:
                if self.buf:
                    raise _ClientGoneError
                return None
            if not self.buf:  # a request's first bytes: did it follow our answer at once?
                self._quick = time.perf_counter() - self._answered_at <= BUSY_POLL_S
                if self.phase == _IDLE:
                    self._wake()
            self.buf += chunk

    def _wake(self) -> None:
        """Between requests -> reading one: from now on no new connection takes this
        one's slot. Raises _ClientGoneError when one just did (the socket is shut down:
        the request cannot be answered; its client sees the connection closed)."""
        with self.ep._conns_lock:
            if self.taken:
                raise _ClientGoneError
            self.phase = _IN_HEAD

    def _head_time_left(self) -> bool:
        """Set the socket's timeout for the next recv of a head; False when its deadline
        has passed (a partial head answered 408 and `close` set; none: nothing to say)."""
        now = time.monotonic()
        if self.buf and self.head_deadline is None:
            self.head_deadline = now + HEAD_DEADLINE_S
        if self.head_deadline is None:
            self._recv_timeout(IDLE_CONNECTION_S)  # between requests
            return True
        if now < self.head_deadline:
            self._recv_timeout(self.head_deadline - now)
            return True
        if self.buf:  # (nothing sent at all: closed like an idle connection)
            self.close = True
            self._answer_error(
                ProtocolError(408, f"request head not whole within {HEAD_DEADLINE_S:g} s")
            )
        return False

    def _poll(self) -> bytes | None:
        """The next bytes, when they come within BUSY_POLL_S of our last answer while
        this connection is the endpoint's only client (no other request since ours:
        under load the threads would take turns spinning on the GIL); None: recv as
        usual. Each try is a system call, which lets other threads take the GIL."""
        ep = self.ep
        counts = ep.counts  # read without its lock: a guess is enough here
        if counts["requests"] != self._nth or not ep.polling.acquire(blocking=False):
            return None
        try:
            end = self._answered_at + BUSY_POLL_S
            poll = self._poller().poll
            while time.perf_counter() < end and counts["requests"] == self._nth:
                # poll(0), not a failing recv: each of those made a BlockingIOError, its
                # message looked up and decoded by the C library's locale code (~2 us,
                # and its tables through the caches, between every two requests)
                if poll(0):
                    try:
                        return self.sock.recv(RECV, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        pass
            return None
        finally:
            ep.polling.release()

    def _poller(self) -> select.poll:
        """A poll object watching this connection's socket for input (made once)."""
        p = self._pollobj
        if p is None:
            p = self._pollobj = select.poll()
            p.register(self.sock.fileno(), select.POLLIN)
        return p

    def _recv_timeout(self, seconds: float) -> None:
        """The socket's receive timeout (a system call only when it changes)."""
        if seconds != self._rcvtimeo:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
            self._rcvtimeo = seconds

    def _sendall(self, data: bytes) -> None:
        """`data` sent: at once when the send buffer takes it (one system call), else
        the rest within IDLE_CONNECTION_S (TimeoutError: the client does not read)."""
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.sock.settimeout(IDLE_CONNECTION_S)
            try:
                self.sock.sendall(memoryview(data)[sent:])
            finally:
                self.sock.settimeout(None)

    def _request(self, raw: bytes) -> None:
        ep = self.ep
        self.head, self.body_read = None, False
        try:
            head = parse_head(raw)
        except ProtocolError as e:
            self.close = True  # where the next request starts is not known
            self._answer_error(e)
            return
        self.head = head
        self.close = not head.keep_alive
        self.body_deadline = time.monotonic() + BODY_DEADLINE_S
        ep.count("requests")
        self._nth = ep.counts["requests"]  # another request after ours: not alone (_poll)
        path, parts = _split_target(head.target)
        try:
            if parts[:1] != ["v2"]:
                raise ProtocolError(404, f"no route {path} (the protocol's routes start /v2)")
            if parts[1:2] == ["health"]:
                if not self.trusted and "authorization" in head.headers:
                    self.trusted = self._authorised(head)
                self._health(head.method, parts[2:])
                return
            if self._authorised(head):
                self.trusted = True
                # the statistics are how an operator watches a flood: not refused by it
                if parts[1:] != ["models", "stats"] and (wait := ep.rate.take(time.monotonic())):
                    ep.count("rate_limited")
                    raise ProtocolError(
                        429, f"over the endpoint's rate limit ({ep.cfg.rate_per_s:g}/s)", wait
                    )
                self._route(head.method, parts[1:])
            else:
                self._unauthorised()
        except ProtocolError as e:
            if e.status >= 500:
                ep.count("busy" if e.status == 503 else "errors")
            self._drain_unread()
            self._answer_error(e)
        except (_ClientGoneError, OSError):
            raise
        except Exception:  # a bug must answer 500, not kill the connection silently
            log.exception("serving: %s %s failed", head.method, path)
            ep.count("errors")
            self.close = True
            self._send(500, {"error": "internal error (see the agent's log)"})

    # -- answering ---------------------------------------------------------------------
    def _send(
        self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send_bytes(status, dumps(doc), headers=headers)

    def _send_bytes(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        if log.isEnabledFor(logging.DEBUG):
            h = self.head
            log.debug("serving: %s %s -> %d", h and h.method, h and h.target, status)
        if self.ep.stopping:  # the last answer on this connection: it says so
            self.close = True
        data = response(status, body, content_type=content_type, headers=headers, close=self.close)
        if self.head is not None and self.head.method == "HEAD":
            # the head GET would answer, no body (RFC 9110 9.3.2): a client reads the
            # next answer right after it
            data = data[: data.index(b"\r\n\r\n") + 4]
        self._sendall(data)
        self._answered_at = time.perf_counter()

    def _answer_error(self, e: ProtocolError) -> None:
        headers: dict[str, str] = {}
        if e.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(e.retry_after_s)))
        if e.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="edge-agent"'
        self._send(e.status, {"error": e.message}, headers)

    def _linger(self) -> None:
        """Before closing: our side shut, and what the client still sends read and
        dropped for a moment, so that its unread input does not turn our last answer
        into a reset it never reads."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + LINGER_S
            self.sock.settimeout(0.05)
            while time.monotonic() < end and self.sock.recv(RECV):
                pass

    # -- routes ------------------------------------------------------------------------
    def _health(self, method: str, rest: list[str]) -> None:
        _method(method, "GET")
        if rest == ["live"]:
            self._send(200, {"live": True})
        elif rest == ["ready"]:
            if not self.ep.ready():
                raise ProtocolError(503, "the agent is not ready yet", retry_after_s=1.0)
            self._send(200, {"ready": True})
        else:
            raise ProtocolError(404, f"no route /v2/health/{'/'.join(rest)}")

    def _unauthorised(self) -> None:
        """Refuse a request without the right token: 401, or 429 past AUTH_FAIL_RATE (a
        bucket of their own: a brute force does not spend the rate of the clients that
        hold the token). Its body is read for at most UNAUTH_BODY_S."""
        ep = self.ep
        now = time.monotonic()
        self.body_deadline = min(self.body_deadline, now + UNAUTH_BODY_S)
        ep.count("unauthorized")
        if wait := ep.auth_failures.take(now):
            ep.count("rate_limited")
            raise ProtocolError(
                429,
                f"too many requests with a missing or wrong token ({ep.auth_failures.rate:g}/s)",
                wait,
            )
        raise ProtocolError(401, "missing or wrong bearer token (Authorization: Bearer ...)")

    def _authorised(self, head: Head) -> bool:
        token = self.ep._token_bytes
        if token is None:
            return True
        got = head.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token)

    def _route(self, method: str, parts: list[str]) -> None:
        ep = self.ep
        if not parts:
            _method(method, "GET")
            meta = {"name": "edge-agent", "version": __version__, "extensions": EXTENSIONS}
            self._send(200, meta)
            return
        if parts[0] != "models":
            raise ProtocolError(404, f"no route /v2/{'/'.join(parts)}")
        if len(parts) == 1:
            _method(method, "GET")
            self._send(200, {"models": ep.catalogue.names()})
            return
        if parts[1:] == ["stats"]:
            _method(method, "GET")
            self._send(200, ep.stats())
            return
        name, rest = parts[1], parts[2:]
        spec = ep.catalogue.spec(name)
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != str(spec.version):
                got = rest[1] if len(rest) > 1 else ""
                raise ProtocolError(404, f"model {name!r} has version {spec.version}, not {got!r}")
            rest = rest[2:]
        if not rest:
            _method(method, "GET")
            self._send(200, model_metadata(spec))
        elif rest == ["ready"]:
            _method(method, "GET")
            self._send(200, {"name": name, "ready": True})
        elif rest == ["stats"]:
            _method(method, "GET")
            self._send(200, ep.model_stats(spec))
        elif rest == ["infer"]:
            _method(method, "POST")
            self._infer(spec)
        else:
            raise ProtocolError(404, f"no route /v2/models/{name}/{'/'.join(rest)}")

    def _infer(self, spec: ModelSpec) -> None:
        ep = self.ep
        body = self._read_body()
        if not ep.inflight.take():
            raise ProtocolError(
                503, f"{ep.cfg.max_inflight} requests are being scored; try again shortly", 1.0
            )
        try:
            req = parse_infer(body, spec, self._header_len())
            budget = ep.cfg.deadline_ms / 1000.0
            own = req.timeout_s is not None and req.timeout_s < budget
            if own:
                assert req.timeout_s is not None
                budget = req.timeout_s
            # A model loaded on demand starts threads (its scheduler, the runtime's),
            # which would inherit this thread's one CPU for the rest of the run.
            unpin = ep.cpu is not None and not ep.scorer.loaded(spec)
            if unpin:
                _set_cpus(ep.all_cpus)
            try:
                scores, threshold = ep.scorer.score(spec, req.windows, budget, req.stream)
            except ProtocolError as e:
                if own and e.deadline:
                    # The client's deadline, not the server's: no retry advice (Triton
                    # answers a timeout 503 without it); a longer timeout may help.
                    raise ProtocolError(
                        503,
                        f"{e.message} (parameters.timeout: {budget * 1e6:g} us, this "
                        "request's own deadline; sent again with it, it may fail again)",
                    ) from None
                raise
            finally:
                if unpin:
                    _set_cpus(ep.cpu)
        finally:
            ep.inflight.give()
        ep.count("scored")
        payload, head_len = infer_body(spec, req, scores, threshold)
        if head_len is None:
            self._send_bytes(200, payload)
        else:
            self._send_bytes(
                200,
                payload,
                content_type="application/octet-stream",
                headers={"Inference-Header-Content-Length": str(head_len)},
            )

    # -- the request body -----------------------------------------------------------------
    def _header_len(self) -> int | None:
        assert self.head is not None
        raw = self.head.headers.get("inference-header-content-length")
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise ProtocolError(
                400, f"Inference-Header-Content-Length {raw!r}: not a number"
            ) from None

    def _read_body(self) -> bytes:
        head = self.head
        assert head is not None
        if head.chunked:
            self.close = True
            raise ProtocolError(411, "send a Content-Length (chunked bodies are not accepted)")
        n = head.content_length
        if n is None:
            self.close = True
            raise ProtocolError(411, "an infer request needs a Content-Length")
        limit = self.ep.cfg.max_body_kb * 1024
        if n > limit:
            self._discard(n, limit)
            raise ProtocolError(
                413, f"request body of {n} bytes is over the limit of {limit} bytes (max_body_kb)"
            )
        self.body_read = True
        if head.expect_continue:
            self._sendall(CONTINUE)
        return self._take(n)

    def _take(self, n: int) -> bytes:
        """The next `n` bytes of the request body (the buffer first). Raises
        _ClientGoneError when the client closes first, ProtocolError 408 (and sets
        `close`) when they are not in by the body's deadline: without a total, a client
        trickling a byte at a time would hold its connection slot for as long as it
        likes, as a slow head would."""
        if len(self.buf) < n:
            parts = [self.buf]
            have = len(self.buf)
            while have < n:
                left = self.body_deadline - time.monotonic()
                if left <= 0:
                    self.close = self.body_read = True
                    raise ProtocolError(408, f"request body not whole within {BODY_DEADLINE_S:g} s")
                self._recv_timeout(left)
                try:
                    chunk = self.sock.recv(max(RECV, n - have))
                except (TimeoutError, BlockingIOError):  # SO_RCVTIMEO ran out
                    continue  # answered above
                if not chunk:
                    raise _ClientGoneError
                parts.append(chunk)
                have += len(chunk)
            self.buf = b"".join(parts)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _discard(self, n: int, limit: int) -> None:
        """Read and drop an oversized body when it is not huge (the client then reads
        the 413); close the connection otherwise (and when the client waits for a 100
        Continue before sending it: it will not send it)."""
        self.body_read = True
        assert self.head is not None
        if n > DISCARD_LIMIT * limit or self.head.expect_continue:
            self.close = True
            return
        left = n
        while left > 0:
            part = self._take(min(left, RECV))
            left -= len(part)

    def _drain_unread(self) -> None:
        """An error answered before the body was read: read it, so the next request on
        this keep-alive connection starts at its own first byte."""
        head = self.head
        if self.body_read or head is None:
            return
        if head.chunked:
            self.close = True  # its end is not known without parsing chunks
            return
        if head.content_length:
            try:
                self._discard(head.content_length, self.ep.cfg.max_body_kb * 1024)
            except ProtocolError:  # not in by its deadline: the first error is answered
                self.close = True


_targets: dict[str, tuple[str, list[str]]] = {}  # a request target -> its path and parts


def _split_target(target: str) -> tuple[str, list[str]]:
    """(the path, its non-empty segments): kept for the targets seen (a client asks for
    the same few again and again; ~1 us a request). The list is read, never changed."""
    got = _targets.get(target)
    if got is None:
        path = target.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        if "%" in path:  # percent-encoded segments (a client library quoting names)
            from urllib.parse import unquote

            parts = [unquote(p) for p in parts]
        got = (path, parts)
        if len(target) <= 256:  # bounded: short targets, the catalogue's names x routes
            if len(_targets) >= 256:
                _targets.clear()
            _targets[target] = got
    return got


def _method(got: str, want: str) -> None:
    if got != want and not (got == "HEAD" and want == "GET"):  # HEAD: GET's head only
        raise ProtocolError(405, f"use {want} here, not {got}")
