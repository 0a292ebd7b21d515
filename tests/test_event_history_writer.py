"""The event history is written by its own thread: a stream's record() never waits for
the disk, lines land in order and survive close(), and a hung disk costs the oldest
queued lines, counted, not a blocked stream (issue 15)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from edge_agent.reporting.history import HISTORY_FILE, EventHistory, read_history


def _rec(i: int) -> dict[str, object]:
    return {"kind": "anomaly", "event": "start", "stream": "s", "t_sample": float(i)}


def _read_fifo(fd: int, want_lines: int, timeout: float = 60.0) -> bytes:
    """Read from a non-blocking FIFO until `want_lines` lines came (generous deadline)."""
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < want_lines and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = b""
        if not chunk:
            time.sleep(0.02)
        data += chunk
    return data


def test_lines_from_several_threads_are_written_in_each_threads_order_and_survive_close(
    tmp_path: Path,
) -> None:
    h = EventHistory(tmp_path)

    def stream(name: str) -> None:
        for i in range(200):
            h.record({**_rec(i), "stream": name})

    threads = [threading.Thread(target=stream, args=(f"s{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h.close()
    recs = list(read_history(tmp_path))
    assert len(recs) == 800
    for k in range(4):
        assert [r["t_sample"] for r in recs if r["stream"] == f"s{k}"] == [
            float(i) for i in range(200)
        ]
    assert h.dropped == 0
    h.record(_rec(999))  # after close: counted, not written, not raised
    assert h.dropped == 1
    assert len(list(read_history(tmp_path))) == 800


def test_rotation_keeps_the_newest_lines_when_a_group_crosses_the_bound(tmp_path: Path) -> None:
    h = EventHistory(tmp_path, max_bytes=2000)
    for i in range(300):
        h.record(_rec(i))
    assert h.flush(timeout=60.0)
    kept = [r["t_sample"] for r in read_history(tmp_path)]
    assert kept == [float(i) for i in range(300 - len(kept), 300)]  # newest, no gap
    files = sorted(tmp_path.glob(f"{HISTORY_FILE}*"))
    assert [f.name for f in files] == [HISTORY_FILE, HISTORY_FILE + ".1"]
    assert all(f.stat().st_size <= 2000 for f in files)
    h.close()


def test_a_hung_disk_does_not_block_record_and_drops_the_oldest_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A FIFO where the file goes: the writer's open() blocks until a reader comes, as a
    # write to a wedged SD card or a hung network filesystem does.
    os.mkfifo(tmp_path / HISTORY_FILE)
    h = EventHistory(tmp_path, queue_max=8)
    n = 100
    with caplog.at_level(logging.ERROR, logger="edge_agent.reporting.history"):
        for i in range(n):
            h.record(_rec(i))  # returns although the writer cannot write anything
        drops = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
        assert len(drops) == 1  # once per spell, not per line
    # The writer holds the group it took before the disk hung (0 to queue_max lines, as
    # the threads were scheduled); of the rest only the newest queue_max are kept.
    assert n - 2 * 8 <= h.dropped <= n - 8
    fd = os.open(tmp_path / HISTORY_FILE, os.O_RDONLY | os.O_NONBLOCK)  # the disk is back
    try:
        data = _read_fifo(fd, n - h.dropped)
        got = [float(x.split(b'"t_sample": ')[1].rstrip(b"}\n")) for x in data.splitlines()]
        assert got[-8:] == [float(i) for i in range(n - 8, n)]  # the newest were kept
        assert len(got) == n - h.dropped
        assert got == sorted(got)
        h.close(timeout=60.0)
    finally:
        os.close(fd)


def test_close_with_a_hung_disk_returns_and_says_what_was_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkfifo(tmp_path / HISTORY_FILE)
    h = EventHistory(tmp_path)
    for i in range(3):
        h.record(_rec(i))
    with caplog.at_level(logging.ERROR, logger="edge_agent.reporting.history"):
        h.close(timeout=0.2)
    assert any("not written" in r.getMessage() for r in caplog.records)
    # let the abandoned writer finish so the test leaves no blocked thread behind
    fd = os.open(tmp_path / HISTORY_FILE, os.O_RDONLY | os.O_NONBLOCK)
    try:
        _read_fifo(fd, 3)
    finally:
        os.close(fd)


def test_an_unwritable_directory_is_logged_once_and_record_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    h = EventHistory(blocker / "state")
    with caplog.at_level(logging.ERROR, logger="edge_agent.reporting.history"):
        for i in range(20):
            h.record(_rec(i))
        assert h.flush(timeout=60.0)
    assert len([r for r in caplog.records if "not written" in r.getMessage()]) == 1
    h.close()
