"""python-tuf's fetcher hook with our transfer bounds: http(s) only, a per-read timeout,
a whole-download deadline and a minimum rate (`ota.fetch.FetchLimits`). ngclient itself
enforces the length limit of every file (metadata and targets) while streaming."""

from __future__ import annotations

import http.client
import tempfile
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
    ) -> None:
        self.limits = limits or FetchLimits()
        self.timeout_s = timeout_s
        self.clock = clock

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
        size = int(length) if length and length.isdigit() else _UNKNOWN_LENGTH
        return self._chunks(url, resp, pacer(self.limits, self.clock, url, size))

    @staticmethod
    def _chunks(
        url: str, resp: http.client.HTTPResponse, pace: Callable[[int], None]
    ) -> Iterator[bytes]:
        received = 0
        try:
            while True:
                try:
                    chunk = resp.read1(CHUNK_SIZE)
                except OSError as e:
                    raise tuf_errors.DownloadError(f"{url}: interrupted: {e}") from e
                if not chunk:
                    return
                received += len(chunk)
                try:
                    pace(received)
                except TransferTooSlowError as e:
                    raise tuf_errors.SlowRetrievalError(str(e)) from e
                yield chunk
        finally:
            resp.close()
