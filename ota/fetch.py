"""Fetching bundles: one ABC whose public `fetch` enforces the size limit, a whole-download
deadline and a minimum rate while streaming, resumes a partial download, can be cancelled,
and turns every foreign error into DownloadError.

Implementations add one hook, `_fetch(url, offset)`, returning a FetchStream that starts
at `offset` if the source could resume there, else at 0. `file://` is only for an
operator's own directory (`FileFetcher(root)`): a URL from the network never names a
local path (see `fetcher_for`).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
import urllib.error
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.fsutil import fsync_dir
from ota.errors import DownloadError, OtaError, SizeLimitError, TransferTooSlowError

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_TIMEOUT_S",
    "FetchLimits",
    "FetchStream",
    "Fetcher",
    "FileFetcher",
    "HttpFetcher",
    "fetcher_for",
    "pacer",
    "partial_path",
]

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
# Per-read socket timeout: below the low-speed window, so a silent server is noticed.
DEFAULT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one download (after curl's --speed-limit/--speed-time and --max-time).

    A download fails (DownloadError, the part kept for a resume) when fewer than
    `min_rate_bps` bytes/s arrived on average over the last `rate_window_s` seconds, or
    when it runs longer than `base_s + max_size / min_rate_bps` seconds in all.
    """

    min_rate_bps: float = 2048.0
    rate_window_s: float = 30.0
    base_s: float = 60.0

    def deadline_s(self, max_size: int) -> float:
        return self.base_s + max_size / self.min_rate_bps


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class FetchStream:
    """What a hook returns: where the data starts, the full size if known, the chunks."""

    start: int
    total: int | None
    chunks: Iterator[bytes]
    close: Callable[[], None] = field(default=lambda: None)


def pacer(
    limits: FetchLimits, clock: Callable[[], float], url: str, max_size: int
) -> Callable[[int], None]:
    """A check to call with the bytes received so far: TransferTooSlowError when the
    transfer crawls below `limits.min_rate_bps` over a window or runs past its deadline."""
    t0 = clock()
    deadline = t0 + limits.deadline_s(max_size)
    mark = [t0, 0]  # start of the current rate window, bytes at its start

    def check(received: int) -> None:
        now = clock()
        if now > deadline:
            raise TransferTooSlowError(
                f"{url}: not finished after {now - t0:.0f} s (limit "
                f"{limits.deadline_s(max_size):.0f} s); will resume"
            )
        if now - mark[0] >= limits.rate_window_s:
            rate = (received - mark[1]) / (now - mark[0])
            if rate < limits.min_rate_bps:
                raise TransferTooSlowError(
                    f"{url}: {rate:.0f} bytes/s over {now - mark[0]:.0f} s, below the "
                    f"minimum {limits.min_rate_bps:.0f}; will resume"
                )
            mark[:] = [now, received]

    return check


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


class Fetcher(ABC):
    """Base class: the invariants live here, transports implement `_fetch` only."""

    limits: FetchLimits = FetchLimits()
    clock: Callable[[], float] = staticmethod(time.monotonic)

    @abstractmethod
    def _fetch(self, url: str, offset: int) -> FetchStream:
        """Open `url` at byte `offset` (or at 0 when the source cannot resume)."""

    def fetch(
        self, url: str, dest: Path, max_size: int, cancel: threading.Event | None = None
    ) -> Path:
        """Download `url` to `dest`, never holding more than `max_size` bytes.

        A `<dest>.part` left by an interrupted call is resumed. On a transport error, a
        crawling or overlong transfer, or `cancel` being set, the part is kept
        (DownloadError); on a size violation it is deleted (SizeLimitError).
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
            self._stream_into(url, stream, part, offset, max_size, cancel=cancel)
        finally:
            stream.close()
        os.replace(part, dest)
        fsync_dir(dest.parent)
        log.info("downloaded %s to %s", url, dest)
        return dest

    def _pace(self, url: str, max_size: int) -> Callable[[int], None]:
        return pacer(self.limits, self.clock, url, max_size)

    def _stream_into(
        self,
        url: str,
        stream: FetchStream,
        part: Path,
        offset: int,
        max_size: int,
        *,
        cancel: threading.Event | None,
    ) -> None:
        if stream.start not in (0, offset):
            raise DownloadError(f"{url}: source resumed at {stream.start}, asked for {offset}")
        if stream.start == 0 and offset:
            log.info("%s: source cannot resume, restarting from 0", url)
        if stream.total is not None and stream.total > max_size:
            part.unlink(missing_ok=True)
            raise SizeLimitError(f"{url}: {stream.total} bytes announced, limit is {max_size}")
        written = stream.start
        pace = self._pace(url, max_size)
        part.parent.mkdir(parents=True, exist_ok=True)
        with part.open("ab" if stream.start else "wb") as out:
            try:
                for chunk in stream.chunks:
                    if cancel is not None and cancel.is_set():
                        raise DownloadError(f"{url}: cancelled after {written} bytes")
                    pace(written - stream.start + len(chunk))
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
    """`file://` URLs inside `root` (an operator's USB stick or share, tests).

    Only regular files under `root` are opened, never following a final link and never
    blocking (a FIFO or device node is refused, not waited on). Without `root` any path
    is allowed: for operator tools only, never for URLs that came from the network.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = None if root is None else Path(root).resolve()

    def _path(self, url: str) -> Path:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme != "file":
            raise DownloadError(f"{url}: not a file:// URL")
        from urllib.request import url2pathname

        path = Path(url2pathname(parsed.path))
        if self.root is not None:
            real = path.resolve()
            if real != self.root and self.root not in real.parents:
                raise DownloadError(f"{url}: outside the local bundle directory")
        return path

    def _fetch(self, url: str, offset: int) -> FetchStream:
        path = self._path(url)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise DownloadError(f"{url}: not a regular file")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
        size = st.st_size
        start = offset if offset <= size else 0
        f.seek(start)
        return FetchStream(start, size, iter(lambda: f.read(CHUNK_SIZE), b""), f.close)


class HttpFetcher(Fetcher):
    """`http://` and `https://` via urllib; resumes with a Range request where served."""

    def __init__(
        self, timeout_s: float = DEFAULT_TIMEOUT_S, limits: FetchLimits | None = None
    ) -> None:
        self.timeout_s = timeout_s
        if limits is not None:
            self.limits = limits

    def _open(self, url: str, offset: int) -> FetchStream:
        # here, not at the top: urllib.request brings http.client, email and ssl (~2 MB
        # resident), and the agent imports this module whether or not it downloads
        import urllib.request

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
        # read1: whatever has arrived (up to a chunk), so a trickle is seen as one
        chunks = iter(lambda: resp.read1(CHUNK_SIZE), b"")
        return FetchStream(start, total, chunks, resp.close)

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


def fetcher_for(
    url: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    *,
    local_root: Path | None = None,
    allow_any_file: bool = False,
    limits: FetchLimits | None = None,
) -> Fetcher:
    """The fetcher for `url`. `file://` is refused unless `local_root` (files under that
    directory only) or `allow_any_file` (operator tools) says otherwise; the refusal is
    the same whatever the path, so it reveals nothing about local files."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme == "file":
        if local_root is not None:
            return FileFetcher(local_root)
        if allow_any_file:
            return FileFetcher()
        raise DownloadError(
            "file:// URLs are not accepted from announcements (set ota.local_bundle_dir "
            "to install from a local directory)"
        )
    if scheme in ("http", "https"):
        return HttpFetcher(timeout_s, limits)
    raise DownloadError(f"unsupported URL scheme {scheme!r} (use http:// or https://)")
