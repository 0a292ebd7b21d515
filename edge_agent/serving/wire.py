"""HTTP/1.1 on the wire for the endpoint, as pure functions: a strict request-head
parser and a one-buffer response. No sockets here (http.py reads and writes).

Strict on purpose: the endpoint is local and its clients are libraries, so anything
outside plain HTTP/1.x (a folded header line, a header without a colon, a bad or
doubled Content-Length, an oversized head) is refused instead of guessed at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate

from edge_agent.serving.protocol import ProtocolError

__all__ = ["MAX_HEAD", "MAX_HEADERS", "Head", "parse_head", "response"]

MAX_HEAD = 65536  # bytes of a request line and headers (http.server's line limit)
MAX_HEADERS = 100  # header lines (http.server's limit)

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(slots=True)
class Head:
    """A parsed request head. `headers`: lower-case names, the first of repeated ones.
    Read-only by convention (a frozen dataclass is ~1 us slower to make, every request):
    parse_head hands the same Head to every request with the same head bytes."""

    method: str
    target: str
    headers: dict[str, str]
    keep_alive: bool  # the client's wish: HTTP/1.1 unless `close`, 1.0 only if asked
    content_length: int | None  # None: no Content-Length header
    chunked: bool  # a Transfer-Encoding (chunked or other) was sent
    expect_continue: bool  # Expect: 100-continue on HTTP/1.1


HEADS_KEPT = 128  # parsed heads kept, by their bytes (see parse_head)
HEAD_KEPT_MAX = 1024  # bytes: longer heads are parsed each time
_heads: dict[bytes, Head] = {}


def parse_head(raw: bytes) -> Head:
    """The head (request line and headers, without the blank line ending it) ->
    Head. Raises ProtocolError: 400 (malformed), 431 (too many headers), 505.

    A head seen before is answered from a bounded cache by its bytes: a keep-alive
    client sends the same few heads again and again (for batch-1 windows, even the same
    Content-Length), and a lookup is ~0.2 us where a parse is ~3. The Head is then
    shared, which its read-only convention allows; a head refused is never kept."""
    got = _heads.get(raw)
    if got is not None:
        return got
    head = _parse_head(raw)
    if len(raw) <= HEAD_KEPT_MAX:
        if len(_heads) >= HEADS_KEPT:
            _heads.clear()
        _heads[raw] = head
    return head


def _parse_head(raw: bytes) -> Head:
    lines = raw.decode("latin-1").split("\r\n")  # bytes are bytes: values are opaque
    method, target, version = _request_line(lines[0])
    if len(lines) - 1 > MAX_HEADERS:
        raise ProtocolError(431, f"more than {MAX_HEADERS} header lines")
    headers, length = _headers(lines[1:])
    conn = headers.get("connection", "").lower()
    keep_alive = version == "HTTP/1.1"
    if "close" in conn:
        keep_alive = False
    elif "keep-alive" in conn:
        keep_alive = True
    return Head(
        method,
        target,
        headers,
        keep_alive,
        length,
        "transfer-encoding" in headers,
        version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue",
    )


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise _bad_line(line)
    method, target, version = parts
    if version not in {"HTTP/1.1", "HTTP/1.0"}:
        if version.startswith("HTTP/") and version[5:6].isdigit():
            raise ProtocolError(505, f"{version[:16]} is not spoken here; use HTTP/1.1")
        raise _bad_line(line)
    if not method.isalpha() or not method.isupper() or not target.startswith("/"):
        raise _bad_line(line)
    return method, target, version


def _bad_line(line: str) -> ProtocolError:  # made only when refused: ~1 us a request
    return ProtocolError(400, f"malformed request line {line[:80]!r}")


def _headers(lines: list[str]) -> tuple[dict[str, str], int | None]:
    """(headers by lower-case name, the first of repeated ones; Content-Length)."""
    headers: dict[str, str] = {}
    length: int | None = None
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name or "\t" in name:
            # also a folded continuation line (leading space), which RFC 9112 retired
            raise ProtocolError(400, f"malformed header line {line[:80]!r}")
        key = name.lower()
        value = value.strip(" \t")
        if key == "content-length":
            if not value.isdigit() or not value.isascii() or len(value) > 18:
                raise ProtocolError(400, f"Content-Length {value[:40]!r}: not a byte count")
            if length is not None and int(value) != length:
                raise ProtocolError(400, "two different Content-Length headers")
            length = int(value)
        headers.setdefault(key, value)
    return headers, length


class _DateCache:
    """The Date header's value, formatted once a second (it has second resolution), and
    the head of a 200 JSON answer up to its Content-Length value with it."""

    def __init__(self) -> None:
        self.at, self.text, self.ok_json = -1, "", b""

    def now(self) -> str:
        t = int(time.time())
        if t != self.at:
            text = formatdate(t, usegmt=True)
            self.ok_json = (
                f"HTTP/1.1 200 OK\r\nServer: edge-agent\r\nDate: {text}\r\n"
                "Content-Type: application/json\r\nContent-Length: "
            ).encode("latin-1")
            self.at, self.text = t, text  # (a thread reading meanwhile: either second's)
        return self.text


_date = _DateCache()


def response(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    close: bool = False,
) -> bytes:
    """A whole response (head and body) as one buffer: one send, one TCP segment for a
    small answer, so Nagle and the client's delayed ACK never meet."""
    if status == 200 and content_type == "application/json" and not headers and not close:
        _date.now()  # the usual answer: its head made once a second (~1.5 us less)
        return b"%s%d\r\n\r\n%s" % (_date.ok_json, len(body), body)
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Server: edge-agent",
        f"Date: {_date.now()}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    for k, v in (headers or {}).items():
        head.append(f"{k}: {v}")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
