"""Readings stamped by an unsynchronised gateway clock are flagged."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.sources.clock import ClockWatch, kernel_clock_synchronized
from edge_agent.sources.runner import SourceRunner, SourceState
from edge_agent.sources.serial import Options, SerialSource
from tests.pty_board import PtyBoard


@pytest.fixture
def board(tmp_path: Path) -> Iterator[PtyBoard]:
    b = PtyBoard(tmp_path / "serial" / "by-id" / "usb-Acme_Clock_0003-if00")
    yield b
    b.close()


def _count_flagged(board: PtyBoard, synced: bool) -> dict[str, int]:
    src = SerialSource("s", Options(port=str(board.path), channels=("a", "b"), format="csv"))
    src.clock = ClockWatch(probe=lambda: synced)
    r = SourceRunner(src, backoff_min_s=0.02, backoff_max_s=0.1)
    r.start()
    try:
        deadline = time.monotonic() + 30
        while r.state is not SourceState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        board.write(b"".join(b"%d,%d\n" % (i, -i) for i in range(50)))
        got = 0
        while got < 50 and time.monotonic() < deadline:
            got += sum(len(b.samples) for b in r.get(0.1))
        assert got == 50
    finally:
        r.stop()
    return src.snapshot_counters()


def test_readings_before_the_clock_is_synchronised_are_flagged(board: PtyBoard) -> None:
    assert _count_flagged(board, synced=False)["unsynced_clock_samples"] == 50


def test_readings_with_a_synchronised_clock_are_not_flagged(board: PtyBoard) -> None:
    assert "unsynced_clock_samples" not in _count_flagged(board, synced=True)


def test_clock_state_is_probed_at_most_every_period() -> None:
    calls: list[int] = []

    def probe() -> bool:
        calls.append(1)
        return len(calls) > 1

    w = ClockWatch(probe=probe, every_s=3600)
    assert w.synchronized() is False
    assert w.synchronized() is False  # cached: the kernel is not asked per read
    assert len(calls) == 1
    assert ClockWatch(probe=probe, every_s=0).synchronized() is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_kernel_clock_state_reads_without_privilege() -> None:
    assert isinstance(kernel_clock_synchronized(), bool)  # this process is not root-only
