"""The serial source over real pseudo-terminals, read by pyserial like a USB-serial port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.sources.framing import encode_frame
from edge_agent.sources.runner import SourceRunner, SourceState
from edge_agent.sources.serial import Options, SerialSource
from tests.pty_board import PtyBoard

CH = ("vib_x", "vib_y", "current")


@pytest.fixture
def board(tmp_path: Path) -> Iterator[PtyBoard]:
    b = PtyBoard(tmp_path / "serial" / "by-id" / "usb-Acme_VibBoard_0001-if00")
    yield b
    b.close()


def _runner(board: PtyBoard, fmt: str = "binary", **kw: object) -> SourceRunner:
    src = SerialSource("line1", Options(port=str(board.path), channels=CH, format=fmt))  # type: ignore[arg-type]
    return SourceRunner(src, backoff_min_s=0.02, backoff_max_s=0.1, **kw)  # type: ignore[arg-type]


def _collect(r: SourceRunner, n_samples: int, timeout: float = 5.0) -> np.ndarray:
    got: list[np.ndarray] = []
    deadline = time.monotonic() + timeout
    while sum(len(g) for g in got) < n_samples and time.monotonic() < deadline:
        got.extend(b.samples for b in r.get(0.1))
    return np.concatenate(got) if got else np.empty((0, len(CH)), np.float32)


def _wait(pred: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    assert pred(), "condition not reached in time"  # type: ignore[operator]


def _frames(n: int, per: int = 8, start: int = 0) -> tuple[bytes, np.ndarray]:
    data = np.arange(start * per * 3, (start + n) * per * 3, dtype=np.float64).reshape(-1, 3)
    wire = b"".join(
        encode_frame(data[i * per : (i + 1) * per], frame_seq=start + i) for i in range(n)
    )
    return wire, data.astype(np.float32)


def test_clean_binary_stream(board: PtyBoard) -> None:
    r = _runner(board)
    r.start()
    try:
        _wait(lambda: r.state is SourceState.RUNNING)
        wire, want = _frames(50)
        board.write(wire)
        got = _collect(r, len(want))
        np.testing.assert_array_equal(got, want)
        c = r.source.snapshot_counters()
        assert c["frames"] == 50
        assert "crc_errors" not in c
        assert "garbage_bytes" not in c
    finally:
        r.stop()


def test_csv_stream(board: PtyBoard) -> None:
    r = _runner(board, fmt="csv")
    r.start()
    try:
        _wait(lambda: r.state is SourceState.RUNNING)
        board.write(b"1,2,3\r\n4,5,6\r\n7,8\r\n9,10,11\r\n")
        got = _collect(r, 4)
        # the bad line is dropped; its one sample is bridged (max_fill_samples = 1)
        assert got.tolist() == [[1, 2, 3], [4, 5, 6], [6.5, 7.5, 8.5], [9, 10, 11]]
        assert r.source.snapshot_counters()["bad_lines"] == 1
        assert r.source.snapshot_counters()["filled_samples"] == 1
    finally:
        r.stop()


def test_garbage_and_partial_frames_resync(board: PtyBoard) -> None:
    r = _runner(board)
    r.start()
    try:
        _wait(lambda: r.state is SourceState.RUNNING)
        _, want = _frames(3)
        f0 = encode_frame(want[0:8], frame_seq=0)
        f1 = encode_frame(want[8:16], frame_seq=1)
        f2 = encode_frame(want[16:24], frame_seq=2)
        # board reset mid-frame: half of f1, then line noise, then the stream resumes
        board.write(b"\xa5\x5a\x13\x37garbage" + f0 + f1[: len(f1) // 2] + b"\xff" * 30 + f2)
        got = _collect(r, 16)
        np.testing.assert_array_equal(got, np.concatenate([want[0:8], want[16:24]]))
        c = r.source.snapshot_counters()
        assert c["frames"] == 2
        assert c["garbage_bytes"] > 0
        assert c["lost_frames"] == 1
        assert r.state is SourceState.RUNNING
    finally:
        r.stop()


def test_crc_errors_counted(board: PtyBoard) -> None:
    r = _runner(board)
    r.start()
    try:
        _wait(lambda: r.state is SourceState.RUNNING)
        _, want = _frames(4)
        frames = [encode_frame(want[i * 8 : (i + 1) * 8], frame_seq=i) for i in range(4)]
        corrupt = bytearray(frames[1])
        corrupt[-1] ^= 0xFF  # wrong CRC
        board.write(frames[0] + bytes(corrupt) + frames[2] + frames[3])
        got = _collect(r, 24)
        np.testing.assert_array_equal(got, np.concatenate([want[:8], want[16:]]))
        assert r.source.snapshot_counters()["crc_errors"] == 1
    finally:
        r.stop()


def test_device_vanishes_and_returns_by_stable_path(board: PtyBoard) -> None:
    r = _runner(board)
    r.start()
    try:
        _wait(lambda: r.state is SourceState.RUNNING)
        wire, _ = _frames(2)
        board.write(wire)
        assert len(_collect(r, 16)) == 16
        board.unplug()
        _wait(lambda: r.state is SourceState.RECONNECTING)
        time.sleep(0.3)  # several failed reopen attempts while it is gone
        assert r.state is SourceState.RECONNECTING
        board.replug()  # same by-id link, new tty underneath
        _wait(lambda: r.state is SourceState.RUNNING)
        wire2, want2 = _frames(2, start=2)
        board.write(wire2)
        got = _collect(r, 16)
        np.testing.assert_array_equal(got, want2)
        assert r.disconnects == 1
        assert r.source.snapshot_counters()["disconnects"] == 1
        assert r.state is SourceState.RUNNING  # waiting for a device spends no restart budget
    finally:
        r.stop()


def test_writer_faster_than_reader_is_bounded_and_counted(board: PtyBoard) -> None:
    r = _runner(board, max_blocks=4)
    r.start()
    try:
        _wait(lambda: r.state is SourceState.RUNNING)
        n_frames = 400
        wire, want = _frames(n_frames)
        for i in range(0, len(wire), 2000):  # many small writes -> many blocks
            board.write(wire[i : i + 2000])
            time.sleep(0.001)
        _wait(lambda: r.source.snapshot_counters().get("frames", 0) == n_frames)
        blocks = r.get(0.1)
        assert 1 <= len(blocks) <= 4  # the consumer never held more than the bound
        assert r.dropped_blocks > 0
        assert r.samples_in == len(want)  # everything parsed: drops are the queue's, counted
        # the newest data wins: the last delivered sample is the last one sent
        np.testing.assert_array_equal(blocks[-1].samples[-1], want[-1])
    finally:
        r.stop()


def test_measured_rate_tracks_the_board(board: PtyBoard) -> None:
    src = SerialSource("m", Options(port=str(board.path), channels=CH, rate_hz=1000.0))
    src.open()
    try:
        t_end = time.monotonic() + 0.6
        i = 0
        while time.monotonic() < t_end:  # ~200 samples/s: 10 samples every 50 ms
            board.write(encode_frame(np.zeros((10, 3)), frame_seq=i))
            i += 1
            src.read(0.05)
            time.sleep(0.05 - 0.01)
        assert 100.0 < src.measured_rate_hz < 400.0  # far from the configured 1000
    finally:
        src.close()


def test_missing_port_waits_without_failing(tmp_path: Path) -> None:
    src = SerialSource("x", Options(port=str(tmp_path / "nope"), channels=CH))
    r = SourceRunner(src, backoff_min_s=0.01, backoff_max_s=0.02)
    r.start()
    try:
        _wait(lambda: r.state is SourceState.RECONNECTING)
        time.sleep(0.3)  # well past 5 attempts: still waiting, not failed
        assert r.state is SourceState.RECONNECTING
        assert "not present" in r.last_error
    finally:
        r.stop()


def test_serial_config_validation() -> None:
    base = {"device_id": "gw", "streams": [{"name": "s", "source": {"kind": "serial"}}]}
    with pytest.raises(ConfigError, match=r"streams\[0\]\.source\.port: required"):
        parse_config(base)
    src = {"kind": "serial", "port": "/dev/serial/by-id/x", "channels": ["a", "a"]}
    with pytest.raises(ConfigError, match="duplicate"):
        parse_config({"device_id": "gw", "streams": [{"name": "s", "source": src}]})
    src = {"kind": "serial", "port": "/dev/x", "channels": ["a"], "format": "xml"}
    with pytest.raises(ConfigError, match=r"source\.format"):
        parse_config({"device_id": "gw", "streams": [{"name": "s", "source": src}]})
    src = {"kind": "serial", "port": "/dev/x", "channels": ["a", "b"], "baud": 9600}
    cfg = parse_config({"device_id": "gw", "streams": [{"name": "s", "source": src}]})
    assert cfg.streams[0].source.options == Options(port="/dev/x", channels=("a", "b"), baud=9600)
