"""The endpoint's HTTP server: stdlib http.server, a bounded number of threads.

Routes (Open Inference Protocol, REST): GET /v2/health/live, /v2/health/ready, /v2,
/v2/models (the names served; an addition), /v2/models/{name}[/versions/{v}],
/v2/models/{name}[/versions/{v}]/ready, /v2/models/stats (the statistics extension's
subset, plus the model pool); POST /v2/models/{name}[/versions/{v}]/infer (JSON, or
with the binary tensor data extension).

Limits, each answered at once and never queued: more than `max_connections` open
connections -> 503; a body over `max_body_kb` -> 413; over `rate_per_s` -> 429; more
than `max_inflight` requests scoring -> 503; a deadline the model's scheduler cannot
meet -> 503. Refusals for load carry Retry-After. With a token file every route but
the health probes needs `Authorization: Bearer <token>` (401 otherwise).

The server runs as a supervised component: its body serves one request at a time
from the listening socket (each connection then gets its own thread) and beats
between them.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.config import ServingConfig
from edge_agent.errors import ServingError
from edge_agent.serving.limits import TokenBucket
from edge_agent.serving.models import Catalogue, Scorer
from edge_agent.serving.protocol import (
    ProtocolError,
    encode_response,
    error_body,
    infer_response,
    model_metadata,
    parse_infer,
)

__all__ = ["Endpoint", "read_token"]

log = logging.getLogger(__name__)

POLL_S = 0.5  # the component beats at least this often
IDLE_CONNECTION_S = 30.0  # a keep-alive connection silent this long is closed
DISCARD_LIMIT = 8  # an oversized body up to this many times the limit is read and dropped
REFUSERS = 4  # threads answering connections over max_connections with a 503
REFUSE_READ_S = 1.0  # how long such a connection may take to send its request head


class _Loop(Protocol):  # service.supervisor.Loop
    stop: threading.Event

    def beat(self) -> None: ...


def read_token(path: str) -> str | None:
    """The bearer token from `path` (first line, stripped); None when `path` is empty."""
    if not path:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except OSError as e:
        raise ServingError(f"[serving] token_file {path}: {e.strerror or e}") from e
    if not token or len(token[0].strip()) < 16:
        raise ServingError(f"[serving] token_file {path}: needs a token of at least 16 characters")
    return token[0].strip()


class _Bounded(socketserver.ThreadingMixIn):
    """A thread per connection, at most `slots` at once. Beyond that a connection is
    answered 503 by one of at most REFUSERS short-lived threads (which read its request
    first, so the client sees the answer rather than a reset), or closed at once when
    those are busy too."""

    daemon_threads = True
    block_on_close = False
    slots = threading.BoundedSemaphore(1)  # replaced by the Endpoint
    refusers = threading.BoundedSemaphore(REFUSERS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            if self.refusers.acquire(blocking=False):
                threading.Thread(
                    target=self._refuse, args=(request,), name="serving-refuse", daemon=True
                ).start()
            else:
                self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def _refuse(self, request: socket.socket) -> None:
        try:
            _refuse_busy(request)
        finally:
            self.shutdown_request(request)  # type: ignore[attr-defined]
            self.refusers.release()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _TCPServer(_Bounded, socketserver.TCPServer):
    allow_reuse_address = True


class _UnixServer(_Bounded, socketserver.UnixStreamServer):
    pass


def _refuse_busy(sock: socket.socket) -> None:
    """A 503 for a connection over the limit, after reading its request head (and what
    of a body is already there) so that closing does not reset the connection."""
    body = error_body("too many connections to the inference endpoint; try again shortly")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: 1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        sock.settimeout(REFUSE_READ_S)
        got = b""
        while b"\r\n\r\n" not in got and len(got) < 65536:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        sock.sendall(head.encode() + body)
        sock.settimeout(0.05)
        with contextlib.suppress(OSError):
            while sock.recv(65536):  # the rest of a body already sent
                pass


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
        self.rate = TokenBucket(cfg.rate_per_s, max(1.0, cfg.rate_per_s))
        self.inflight = threading.BoundedSemaphore(cfg.max_inflight)
        self.counts: dict[str, int] = {
            "requests": 0,
            "scored": 0,
            "rate_limited": 0,
            "busy": 0,
            "errors": 0,
        }
        self._counts_lock = threading.Lock()
        # TCP_NODELAY on TCP: headers and body are two writes, and Nagle would hold the
        # body until the client's delayed ACK (~40 ms a request)
        handler = type(
            "Handler", (_Handler,), {"ep": self, "disable_nagle_algorithm": not cfg.socket}
        )
        server: _TCPServer | _UnixServer
        try:
            if cfg.socket:
                _clear_stale_socket(cfg.socket)
                server = _UnixServer(cfg.socket, handler)
                os.chmod(cfg.socket, cfg.socket_mode)
            else:
                server = _TCPServer((cfg.host, cfg.port), handler)
        except OSError as e:
            where = cfg.socket or f"{cfg.host}:{cfg.port}"
            raise ServingError(f"[serving] cannot listen on {where}: {e.strerror or e}") from e
        server.slots = threading.BoundedSemaphore(cfg.max_connections)
        server.refusers = threading.BoundedSemaphore(REFUSERS)
        server.timeout = POLL_S
        self._server = server
        log.info("inference endpoint (Open Inference Protocol) on %s", self.address)

    @property
    def address(self) -> str:
        if self.cfg.socket:
            return f"unix:{self.cfg.socket}"
        return f"http://{self.cfg.host}:{self.port}"

    @property
    def port(self) -> int:
        """The TCP port listened on (0 on a unix socket); `port = 0` in tests picks one."""
        addr = self._server.server_address
        return int(addr[1]) if isinstance(addr, tuple) else 0

    def stats(self) -> dict[str, Any]:
        """GET /v2/models/stats: the statistics extension's subset for each loaded model,
        plus the model pool (budget, measured charges, evictions) and this endpoint's
        request counts."""
        scheds = {s.name: s.snapshot() for s in self.scorer.schedulers.all()}
        pool = self.scorer.pool.snapshot()
        models = []
        for m in pool["models"]:
            sn = scheds.get(m["model"], {})
            models.append(
                {
                    "name": m["model"],
                    "version": str(m["version"]),
                    "inference_count": sn.get("windows", 0),
                    "execution_count": sn.get("batches", 0),
                }
            )
        with self._counts_lock:
            counts = dict(self.counts)
        return {"model_stats": models, "pool": pool, "endpoint": counts}

    def count(self, what: str) -> None:
        with self._counts_lock:
            self.counts[what] += 1

    def run(self, loop: _Loop) -> None:
        """The supervised body: accept connections until the agent stops."""
        while not loop.stop.is_set():
            loop.beat()
            self._server.handle_request()  # waits at most POLL_S

    def close(self) -> None:
        self._server.server_close()
        if self.cfg.socket:
            with contextlib.suppress(OSError):
                os.unlink(self.cfg.socket)


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as client libraries expect
    timeout = IDLE_CONNECTION_S
    server_version = "edge-agent"
    ep: Endpoint
    _body_read = False  # this request's body was read (or dropped)

    def address_string(self) -> str:
        ca = self.client_address
        return str(ca[0]) if isinstance(ca, tuple) and ca else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("serving: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing ------------------------------------------------------------------
    def _send(
        self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, e: ProtocolError) -> None:
        headers: dict[str, str] = {}
        if e.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(e.retry_after_s)))
        if e.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="edge-agent"'
        self._send(e.status, {"error": e.message}, headers)

    def _dispatch(self, method: str) -> None:
        ep = self.ep
        ep.count("requests")
        self._body_read = False  # per request: a keep-alive connection carries many
        path = self.path.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        try:
            if parts[:1] != ["v2"]:
                raise ProtocolError(404, f"no route {path} (the protocol's routes start /v2)")
            if parts[1:2] == ["health"]:
                self._health(method, parts[2:])
                return
            self._authorise()
            wait = ep.rate.take(time.monotonic())
            if wait > 0:
                ep.count("rate_limited")
                raise ProtocolError(
                    429, f"over the endpoint's rate limit ({ep.cfg.rate_per_s:g}/s)", wait
                )
            self._route(method, parts[1:])
        except ProtocolError as e:
            if e.status >= 500:
                ep.count("busy" if e.status == 503 else "errors")
            self._drain_unread()
            self._send_error(e)
        except Exception:  # a bug must answer 500, not kill the connection silently
            log.exception("serving: %s %s failed", method, path)
            ep.count("errors")
            self.close_connection = True
            self._send(500, {"error": "internal error (see the agent's log)"})

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

    def _authorise(self) -> None:
        token = self.ep.token
        if token is None:
            return
        got = self.headers.get("Authorization", "")
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            raise ProtocolError(401, "missing or wrong bearer token (Authorization: Bearer ...)")

    def _route(self, method: str, parts: list[str]) -> None:
        ep = self.ep
        if not parts:
            _method(method, "GET")
            self._send(200, {"name": "edge-agent", "version": __version__, "extensions": []})
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
        elif rest == ["infer"]:
            _method(method, "POST")
            self._infer(spec)
        else:
            raise ProtocolError(404, f"no route /v2/models/{name}/{'/'.join(rest)}")

    def _infer(self, spec: Any) -> None:
        ep = self.ep
        body = self._read_body()
        if not ep.inflight.acquire(blocking=False):
            raise ProtocolError(
                503, f"{ep.cfg.max_inflight} requests are being scored; try again shortly", 1.0
            )
        try:
            req = parse_infer(body, spec, self._header_len())
            budget = ep.cfg.deadline_ms / 1000.0
            if req.timeout_s is not None:
                budget = min(budget, req.timeout_s)
            scores, threshold = ep.scorer.score(spec, req.windows, budget, req.stream)
        finally:
            ep.inflight.release()
        ep.count("scored")
        payload, head = encode_response(infer_response(spec, req, scores, threshold), req)
        self.send_response(200)
        if head is None:
            self.send_header("Content-Type", "application/json")
        else:
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Inference-Header-Content-Length", str(head))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _header_len(self) -> int | None:
        raw = self.headers.get("Inference-Header-Content-Length")
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise ProtocolError(
                400, f"Inference-Header-Content-Length {raw!r}: not a number"
            ) from None

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ProtocolError(411, "send a Content-Length (chunked bodies are not accepted)")
        raw = self.headers.get("Content-Length")
        try:
            n = int(raw) if raw is not None else -1
        except ValueError:
            n = -1
        if n < 0:
            self.close_connection = True
            raise ProtocolError(411, "an infer request needs a Content-Length")
        limit = self.ep.cfg.max_body_kb * 1024
        if n > limit:
            self._discard(n, limit)
            raise ProtocolError(
                413, f"request body of {n} bytes is over the limit of {limit} bytes (max_body_kb)"
            )
        self._body_read = True
        return self.rfile.read(n)

    def _discard(self, n: int, limit: int) -> None:
        """Read and drop an oversized body when it is not huge (the client then reads
        the 413); close the connection otherwise."""
        self._body_read = True
        if n > DISCARD_LIMIT * limit:
            self.close_connection = True
            return
        left = n
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)

    def _drain_unread(self) -> None:
        """An error answered before the body was read: read it, so the next request on
        this keep-alive connection starts at its own first byte."""
        if self._body_read:
            return
        raw = self.headers.get("Content-Length") if self.headers else None
        try:
            n = int(raw) if raw else 0
        except ValueError:
            n = 0
        if n > 0:
            self._discard(n, self.ep.cfg.max_body_kb * 1024)


def _method(got: str, want: str) -> None:
    if got != want:
        raise ProtocolError(405, f"use {want} here, not {got}")
