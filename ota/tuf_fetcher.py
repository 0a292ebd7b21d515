"""python-tuf's fetcher hook with our transfer bounds: http(s) only, a per-read timeout,
a whole-download deadline and a minimum rate (`ota.fetch.FetchLimits`). ngclient itself
enforces the length limit of every file (metadata and targets) while streaming."""

from __future__ import annotations

import http.client
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface

from ota.errors import TransferTooSlowError
from ota.fetch import CHUNK_SIZE, DEFAULT_TIMEOUT_S, FetchLimits, pacer

__all__ = ["BoundedFetcher"]

_UNKNOWN_LENGTH = 64 * 1024 * 1024  # deadline basis when the server sends no length


class BoundedFetcher(FetcherInterface):
    def __init__(
        self,
        limits: FetchLimits | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        cancel: threading.Event | None = None,
    ) -> None:
        self.limits = limits or FetchLimits()
        self.timeout_s = timeout_s
        self.clock = clock
        self.cancel = cancel  # set: the transfer ends at its next chunk (agent stopping)

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """As python-tuf's, but the transfer is closed as soon as it stops, also when
        the length limit cuts it (no connection is left for the garbage collector)."""
        with tempfile.TemporaryFile() as out:
            chunks = self.fetch(url)
            received = 0
            try:
                for chunk in chunks:
                    received += len(chunk)
                    if received > max_length:
                        raise tuf_errors.DownloadLengthMismatchError(
                            f"{url}: more than the allowed {max_length} bytes"
                        )
                    out.write(chunk)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            out.seek(0)
            yield out

    def _fetch(self, url: str) -> Iterator[bytes]:
        if urllib.parse.urlparse(url).scheme not in ("http", "https"):
            raise tuf_errors.DownloadError(f"{url}: only http(s) URLs are fetched")
        try:
            resp = urllib.request.urlopen(url, timeout=self.timeout_s)  # noqa: S310 - checked
        except urllib.error.HTTPError as e:
            e.close()
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP {e.code}", e.code) from e
        length = resp.headers.get("Content-Length")
        declared = int(length) if length and length.isdigit() else None
        pace = pacer(self.limits, self.clock, url, declared or _UNKNOWN_LENGTH)
        return self._chunks(url, resp, pace, declared)

    def _chunks(
        self,
        url: str,
        resp: http.client.HTTPResponse,
        pace: Callable[[int], None],
        declared: int | None,
    ) -> Iterator[bytes]:
        received = 0
        try:
            while True:
                if self.cancel is not None and self.cancel.is_set():
                    raise tuf_errors.DownloadError(f"{url}: cancelled")
                try:
                    chunk = resp.read1(CHUNK_SIZE)
                except http.client.IncompleteRead as e:
                    raise tuf_errors.DownloadError(
                        f"{url}: connection closed after {received + len(e.partial)} of "
                        f"{declared} bytes"
                    ) from e
                except OSError as e:
                    raise tuf_errors.DownloadError(f"{url}: interrupted: {e}") from e
                if not chunk:
                    # A server that dies mid-file closes the connection early: a cut
                    # transfer (retried), not a file whose hash is wrong (a verdict).
                    if declared is not None and received < declared:
                        raise tuf_errors.DownloadError(
                            f"{url}: connection closed after {received} of {declared} bytes"
                        )
                    return
                received += len(chunk)
                try:
                    pace(received)
                except TransferTooSlowError as e:
                    raise tuf_errors.SlowRetrievalError(str(e)) from e
                yield chunk
        finally:
            resp.close()
