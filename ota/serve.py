"""A tiny HTTP server for bundles (`edge-ota publish --serve`) and TUF repositories
(`edge-ota serve`), with Range support so devices can resume. Meant for tests and small
sites: it serves only the files it was given (or the regular files under one directory),
read-only; production fleets serve the same static files from any HTTP/S3 store.
"""

from __future__ import annotations

import logging
import re
import shutil
import stat
import threading
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

__all__ = [
    "BundleRequestHandler",
    "BundleServer",
    "DirectoryRequestHandler",
    "start_dir_server",
    "start_server",
]

log = logging.getLogger(__name__)
SHUTDOWN_POLL_S = 0.1  # how soon close() returns; the loop sleeps in select() meanwhile
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class BundleRequestHandler(BaseHTTPRequestHandler):
    """GET/HEAD of a fixed set of files by name; a single `bytes=a-[b]` Range is honoured."""

    files: ClassVar[Mapping[str, Path]] = {}
    server_version = "edge-ota"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s: " + format, self.address_string(), *args)

    def _send_body(self, f: BinaryIO, length: int) -> None:
        shutil.copyfileobj(_Limited(f, length), self.wfile)

    def _lookup(self, name: str) -> Path | None:
        return self.files.get(name)

    def _handle(self, body: bool) -> None:
        path = self._lookup(self.path.split("?", 1)[0].lstrip("/"))
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if m is None or int(m.group(1)) >= size:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(m.group(1))
            if m.group(2):
                end = min(end, int(m.group(2)))
            status = HTTPStatus.PARTIAL_CONTENT
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            with path.open("rb") as f:
                f.seek(start)
                self._send_body(f, length)

    def do_GET(self) -> None:
        self._handle(body=True)

    def do_HEAD(self) -> None:
        self._handle(body=False)


class DirectoryRequestHandler(BundleRequestHandler):
    """GET/HEAD of regular files under `root` (a TUF repository: static files). Names
    with empty, `.` or `..` components, links and anything not a regular file are 404."""

    root: ClassVar[Path] = Path()

    def _lookup(self, name: str) -> Path | None:
        parts = urllib.parse.unquote(name).split("/")
        if any(p in ("", ".", "..") or "\\" in p for p in parts):
            return None
        path = self.root.joinpath(*parts)
        try:
            st = path.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or self.root.resolve() not in path.resolve().parents:
            return None
        return path


class _Limited:
    def __init__(self, f: BinaryIO, left: int) -> None:
        self.f, self.left = f, left

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A device that stops reading (size limit, reboot) is normal, not a traceback.
        log.debug("http client %s went away", client_address, exc_info=True)


class BundleServer:
    """A running server on its own daemon thread; `url(name)` gives a file's URL."""

    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self.httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(SHUTDOWN_POLL_S,), name="ota-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, name: str) -> str:
        host = str(self.httpd.server_address[0])
        return f"http://{host}:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def start_dir_server(root: Path, host: str = "127.0.0.1", port: int = 0) -> BundleServer:
    """Serve every regular file under `root` (read at each request: a repository may
    change while served); port 0 picks a free port."""
    cls = type("BoundDirHandler", (DirectoryRequestHandler,), {"root": Path(root)})
    return BundleServer(_Server((host, port), cls))


def start_server(
    files: Mapping[str, Path],
    host: str = "127.0.0.1",
    port: int = 0,
    handler: type[BundleRequestHandler] = BundleRequestHandler,
) -> BundleServer:
    """Serve `files` (URL name -> path); port 0 picks a free port."""
    cls = type("BoundHandler", (handler,), {"files": dict(files)})
    httpd = _Server((host, port), cls)
    return BundleServer(httpd)
