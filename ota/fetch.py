"""Fetching bundles: one ABC whose public `fetch` enforces the size limit while streaming,
resumes a partial download, and turns every foreign error into DownloadError.

Implementations add one hook, `_fetch(url, offset)`, returning a FetchStream that starts
at `offset` if the source could resume there, else at 0.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.fsutil import fsync_dir
from ota.errors import DownloadError, OtaError, SizeLimitError

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_TIMEOUT_S",
    "FetchStream",
    "Fetcher",
    "FileFetcher",
    "HttpFetcher",
    "fetcher_for",
    "partial_path",
]

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
DEFAULT_TIMEOUT_S = 30.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class FetchStream:
    """What a hook returns: where the data starts, the full size if known, the chunks."""

    start: int
    total: int | None
    chunks: Iterator[bytes]
    close: Callable[[], None] = field(default=lambda: None)


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


class Fetcher(ABC):
    """Base class: the invariants live here, transports implement `_fetch` only."""

    @abstractmethod
    def _fetch(self, url: str, offset: int) -> FetchStream:
        """Open `url` at byte `offset` (or at 0 when the source cannot resume)."""

    def fetch(self, url: str, dest: Path, max_size: int) -> Path:
        """Download `url` to `dest`, never holding more than `max_size` bytes.

        A `<dest>.part` left by an interrupted call is resumed. On a transport error the
        part is kept (DownloadError); on a size violation it is deleted (SizeLimitError).
        """
        dest = Path(dest)
        part = partial_path(dest)
        offset = part.stat().st_size if part.exists() else 0
        if offset > max_size:
            part.unlink()
            offset = 0
        try:
            stream = self._fetch(url, offset)
        except OtaError:
            raise
        except Exception as e:  # any transport failure is a DownloadError
            raise DownloadError(f"{url}: {e}") from e
        try:
            self._stream_into(url, stream, part, offset, max_size)
        finally:
            stream.close()
        os.replace(part, dest)
        fsync_dir(dest.parent)
        log.info("downloaded %s to %s", url, dest)
        return dest

    @staticmethod
    def _stream_into(url: str, stream: FetchStream, part: Path, offset: int, max_size: int) -> None:
        if stream.start not in (0, offset):
            raise DownloadError(f"{url}: source resumed at {stream.start}, asked for {offset}")
        if stream.start == 0 and offset:
            log.info("%s: source cannot resume, restarting from 0", url)
        if stream.total is not None and stream.total > max_size:
            part.unlink(missing_ok=True)
            raise SizeLimitError(f"{url}: {stream.total} bytes announced, limit is {max_size}")
        written = stream.start
        part.parent.mkdir(parents=True, exist_ok=True)
        with part.open("ab" if stream.start else "wb") as out:
            try:
                for chunk in stream.chunks:
                    written += len(chunk)
                    if written > max_size:
                        out.close()
                        part.unlink(missing_ok=True)
                        raise SizeLimitError(f"{url}: more than {max_size} bytes; download stopped")
                    out.write(chunk)
            except OtaError:
                raise
            except Exception as e:  # interrupted transfer: keep the part
                raise DownloadError(
                    f"{url}: interrupted after {written} bytes ({e}); run again to resume"
                ) from e
            finally:
                if not out.closed:
                    out.flush()
                    os.fsync(out.fileno())
        if stream.total is not None and written < stream.total:
            raise DownloadError(
                f"{url}: truncated at {written} of {stream.total} bytes; run again to resume"
            )


class FileFetcher(Fetcher):
    """`file://` URLs (USB sticks, shared mounts, tests)."""

    def _fetch(self, url: str, offset: int) -> FetchStream:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme != "file":
            raise DownloadError(f"{url}: not a file:// URL")
        f = Path(urllib.request.url2pathname(parsed.path)).open("rb")  # noqa: SIM115 - closed by stream
        size = os.fstat(f.fileno()).st_size
        start = offset if offset <= size else 0
        f.seek(start)
        return FetchStream(start, size, iter(lambda: f.read(CHUNK_SIZE), b""), f.close)


class HttpFetcher(Fetcher):
    """`http://` and `https://` via urllib; resumes with a Range request where served."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    def _open(self, url: str, offset: int) -> FetchStream:
        req = urllib.request.Request(url)  # noqa: S310 - scheme checked in _fetch
        if offset:
            req.add_header("Range", f"bytes={offset}-")
        resp = urllib.request.urlopen(req, timeout=self.timeout_s)  # noqa: S310
        start, total = 0, None
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m is None:
                resp.close()
                raise DownloadError(f"{url}: 206 without a usable Content-Range")
            start = int(m.group(1))
            total = None if m.group(3) == "*" else int(m.group(3))
        elif resp.status == 200:
            total = int(length) if length and length.isdigit() else None
        else:
            resp.close()
            raise DownloadError(f"{url}: HTTP {resp.status}")
        return FetchStream(start, total, iter(lambda: resp.read(CHUNK_SIZE), b""), resp.close)

    def _fetch(self, url: str, offset: int) -> FetchStream:
        if urllib.parse.urlparse(url).scheme not in ("http", "https"):
            raise DownloadError(f"{url}: not an http(s):// URL")
        try:
            return self._open(url, offset)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and offset:  # our part is stale or complete: start over
                return self._open(url, 0)
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e


def fetcher_for(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Fetcher:
    scheme = urllib.parse.urlparse(url).scheme
    if scheme == "file":
        return FileFetcher()
    if scheme in ("http", "https"):
        return HttpFetcher(timeout_s)
    raise DownloadError(f"{url}: unsupported scheme {scheme!r} (use file://, http:// or https://)")
