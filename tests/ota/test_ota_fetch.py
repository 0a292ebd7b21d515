"""Fetchers against real files and a real local http.server: size limits while
streaming, resume after an interrupted transfer, errors translated."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, ClassVar

import pytest

from ota.errors import DownloadError, SizeLimitError, TransferTooSlowError
from ota.fetch import (
    Fetcher,
    FetchLimits,
    FetchStream,
    FileFetcher,
    HttpFetcher,
    fetcher_for,
    partial_path,
)
from ota.serve import BundleRequestHandler, BundleServer, start_server

DATA = os.urandom(300_000)


class CuttingHandler(BundleRequestHandler):
    """Sends only the first `cut` bytes of the first full response, then drops the link."""

    cut: ClassVar[int] = 100_000
    ranges: ClassVar[list[str | None]] = []
    lock = threading.Lock()

    def _send_body(self, f: IO[bytes], length: int) -> None:
        with self.lock:
            self.ranges.append(self.headers.get("Range"))
            first = len(self.ranges) == 1
        if first:
            self.wfile.write(f.read(self.cut))
            self.wfile.flush()
            self.close_connection = True
            return
        super()._send_body(f, length)  # type: ignore[arg-type]


class NoRangeHandler(BundleRequestHandler):
    """A server that ignores Range (answers 200 with everything)."""

    def _handle(self, body: bool) -> None:
        del self.headers["Range"]
        super()._handle(body)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "b.bundle"
    p.write_bytes(DATA)
    return p


@pytest.fixture
def server(src: Path) -> Iterator[BundleServer]:
    s = start_server({"b.bundle": src})
    yield s
    s.close()


def test_http_download(server: BundleServer, tmp_path: Path) -> None:
    dest = HttpFetcher(timeout_s=5).fetch(server.url("b.bundle"), tmp_path / "d", len(DATA))
    assert dest.read_bytes() == DATA
    assert not partial_path(dest).exists()


def test_resume_of_interrupted_http_download(src: Path, tmp_path: Path) -> None:
    CuttingHandler.ranges = []
    s = start_server({"b.bundle": src}, handler=CuttingHandler)
    try:
        dest = tmp_path / "dl" / "b.bundle"
        f = HttpFetcher(timeout_s=5)
        with pytest.raises(DownloadError, match="resume"):
            f.fetch(s.url("b.bundle"), dest, len(DATA))
        assert partial_path(dest).stat().st_size == CuttingHandler.cut
        assert not dest.exists()
        f.fetch(s.url("b.bundle"), dest, len(DATA))
    finally:
        s.close()
    assert dest.read_bytes() == DATA
    assert CuttingHandler.ranges == [None, f"bytes={CuttingHandler.cut}-"]


def test_server_without_range_support_restarts_cleanly(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "b.bundle"
    dest.parent.mkdir()
    partial_path(dest).write_bytes(b"stale partial bytes")
    s = start_server({"b.bundle": src}, handler=NoRangeHandler)
    try:
        HttpFetcher(timeout_s=5).fetch(s.url("b.bundle"), dest, len(DATA))
    finally:
        s.close()
    assert dest.read_bytes() == DATA


def test_complete_partial_gets_416_and_restarts(server: BundleServer, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "b.bundle"
    dest.parent.mkdir()
    partial_path(dest).write_bytes(DATA)  # complete but never renamed (crash)
    HttpFetcher(timeout_s=5).fetch(server.url("b.bundle"), dest, len(DATA))
    assert dest.read_bytes() == DATA


def test_http_larger_than_limit(server: BundleServer, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "b.bundle"
    with pytest.raises(SizeLimitError):
        HttpFetcher(timeout_s=5).fetch(server.url("b.bundle"), dest, len(DATA) - 1)
    assert not dest.exists()
    assert not partial_path(dest).exists()


class EndlessFetcher(Fetcher):
    """A source that never ends and never announces a length (endless data attack)."""

    served = 0

    def _fetch(self, url: str, offset: int) -> FetchStream:
        def chunks() -> Iterator[bytes]:
            while True:
                self.served += 4096
                yield b"\0" * 4096

        return FetchStream(0, None, chunks())


def test_endless_data_is_cut_at_the_limit(tmp_path: Path) -> None:
    f = EndlessFetcher()
    with pytest.raises(SizeLimitError):
        f.fetch("endless://", tmp_path / "x", 100_000)
    assert f.served <= 100_000 + 4096
    assert not partial_path(tmp_path / "x").exists()


def test_http_404_is_download_error(server: BundleServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        HttpFetcher(timeout_s=5).fetch(server.url("nope"), tmp_path / "x", 10)


def test_connection_refused_is_download_error(tmp_path: Path) -> None:
    s = start_server({})
    url = s.url("b.bundle")
    s.close()
    with pytest.raises(DownloadError):
        HttpFetcher(timeout_s=2).fetch(url, tmp_path / "x", 10)


def test_file_download_and_resume(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "d.bundle"
    partial_path(dest).write_bytes(DATA[:1234])
    FileFetcher().fetch(src.as_uri(), dest, len(DATA))
    assert dest.read_bytes() == DATA


def test_missing_file_is_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError):
        FileFetcher().fetch((tmp_path / "missing").as_uri(), tmp_path / "x", 10)


def test_unsupported_scheme() -> None:
    with pytest.raises(DownloadError, match="scheme"):
        fetcher_for("ftp://example/b.bundle")


class PacedFetcher(Fetcher):
    """A source whose chunks arrive `gap_s` apart on a simulated clock (no sleeping)."""

    def __init__(self, chunk: int, gap_s: float, total: int, limits: FetchLimits) -> None:
        self.now = 0.0
        self.chunk, self.gap_s, self.total = chunk, gap_s, total
        self.limits = limits
        self.clock = lambda: self.now

    def _fetch(self, url: str, offset: int) -> FetchStream:
        def chunks() -> Iterator[bytes]:
            sent = 0
            while sent < self.total:
                self.now += self.gap_s
                n = min(self.chunk, self.total - sent)
                sent += n
                yield b"\1" * n

        return FetchStream(0, self.total, chunks())


def test_slow_retrieval_below_the_minimum_rate_is_given_up_and_resumable(tmp_path: Path) -> None:
    limits = FetchLimits(min_rate_bps=1000.0, rate_window_s=10.0, base_s=60.0)
    f = PacedFetcher(chunk=10, gap_s=1.0, total=100_000, limits=limits)
    with pytest.raises(TransferTooSlowError, match="below the minimum"):
        f.fetch("slow://", tmp_path / "x", 100_000)
    assert f.now <= 11.0  # given up after one rate window, not after 10,000 s
    assert partial_path(tmp_path / "x").stat().st_size > 0  # kept: the next try resumes


def test_download_at_a_usable_rate_is_not_cut(tmp_path: Path) -> None:
    limits = FetchLimits(min_rate_bps=1000.0, rate_window_s=10.0, base_s=60.0)
    f = PacedFetcher(chunk=2000, gap_s=1.0, total=100_000, limits=limits)
    assert f.fetch("ok://", tmp_path / "x", 100_000).stat().st_size == 100_000


def test_whole_download_deadline(tmp_path: Path) -> None:
    # The rate window never closes here: only the overall deadline (1 + 500/1000 s) ends it.
    limits = FetchLimits(min_rate_bps=1000.0, rate_window_s=1e9, base_s=1.0)
    f = PacedFetcher(chunk=1, gap_s=0.01, total=500, limits=limits)
    with pytest.raises(TransferTooSlowError, match="not finished after"):
        f.fetch("slow://", tmp_path / "x", 500)
    assert f.now <= 1.6


def test_cancelled_download_keeps_its_part(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    f = PacedFetcher(chunk=10, gap_s=0.0, total=100, limits=FetchLimits())
    with pytest.raises(DownloadError, match="cancelled"):
        f.fetch("x://", tmp_path / "x", 100, cancel)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    errors: list[Exception] = []

    def run() -> None:
        try:
            FileFetcher(tmp_path).fetch(fifo.as_uri(), tmp_path / "out" / "x", 10)
        except DownloadError as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening a FIFO blocked"
    assert errors
    assert "not a regular file" in str(errors[0])


def test_file_outside_the_local_root_is_refused(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "usb"
    root.mkdir()
    (root / "link.bundle").symlink_to(src)
    for url in ((root / "link.bundle").as_uri(), f"file://{root}/../b.bundle"):
        with pytest.raises(DownloadError, match="outside the local bundle directory"):
            FileFetcher(root).fetch(url, tmp_path / "x", len(DATA))


def test_file_url_from_the_network_is_refused_alike_for_any_path(tmp_path: Path) -> None:
    messages = set()
    for path in (Path("/etc/passwd"), tmp_path / "missing"):
        with pytest.raises(DownloadError) as e:
            fetcher_for(path.as_uri())
        messages.add(str(e.value))
    assert len(messages) == 1
    assert "not accepted from announcements" in messages.pop()
