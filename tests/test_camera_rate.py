"""The rate a camera is held to: a configured expected rate overrides what the driver
reports, and a network stream's rate is learned from delivery, not OpenCV's guess."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from edge_agent.sources.camera import CameraSource, Options

cv2 = pytest.importorskip("cv2")
pytestmark = pytest.mark.camera

SENT_FPS = 10.0


def _video(path: Path, fps: float = 30.0, n: int = 30) -> str:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (32, 24))
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((24, 32, 3), 4 * i, np.uint8))
    w.release()
    return str(path)


@pytest.fixture
def mjpeg_url() -> Iterator[str]:
    """A loopback MJPEG-over-HTTP camera at SENT_FPS; the stream says nothing of its rate."""
    jpegs = [
        cv2.imencode(".jpg", np.full((48, 64, 3), 20 * i, np.uint8))[1].tobytes() for i in range(8)
    ]
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def client(c: socket.socket) -> None:
        with c:
            try:
                c.recv(4096)
                c.sendall(
                    b"HTTP/1.0 200 OK\r\n"
                    b"Content-Type: multipart/x-mixed-replace; boundary=f\r\n\r\n"
                )
                start, i = time.monotonic(), 0
                while not stop.is_set():
                    j = jpegs[i % len(jpegs)]
                    head = b"--f\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(j)
                    c.sendall(head + j + b"\r\n")
                    i += 1
                    stop.wait(max(0.0, start + i / SENT_FPS - time.monotonic()))
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=client, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/stream.mjpg"
    stop.set()
    t.join(2)
    srv.close()


def test_camera_expected_rate_overrides_the_drivers(tmp_path: Path) -> None:
    video = _video(tmp_path / "v.avi", fps=30.0)
    src = CameraSource("cam", Options(url=video, expected_fps=12.0))
    src.open()
    try:
        assert src.nominal_rate_hz == 12.0  # not the 30 the file (driver) reports
    finally:
        src.close()


def test_network_camera_rate_is_learned_from_delivery(mjpeg_url: str) -> None:
    src = CameraSource("cam", Options(url=mjpeg_url, width=32, height=32, fps_cap=5.0))
    src.open()
    try:
        assert src.nominal_rate_hz is None  # OpenCV's guess (25 for MJPEG over HTTP) is not used
        deadline = time.monotonic() + 60
        while src.nominal_rate_hz is None and time.monotonic() < deadline:
            src.read(0.2)
        learned = src.nominal_rate_hz
        assert learned is not None, "no rate learned from 60 s of delivery"
        # what arrived: 10 fps, or less on a loaded machine; never the 25 fps default
        assert 2.0 <= learned <= 1.3 * SENT_FPS
    finally:
        src.close()


def test_network_camera_expected_rate_is_used_at_once(mjpeg_url: str) -> None:
    src = CameraSource("cam", Options(url=mjpeg_url, width=32, height=32, expected_fps=10.0))
    src.open()
    try:
        assert src.nominal_rate_hz == 10.0
    finally:
        src.close()


def test_expected_fps_config_key() -> None:
    src = {"kind": "camera", "url": "rtsp://10.0.0.5/s", "expected_fps": 15}
    cfg = parse_config({"device_id": "gw", "streams": [{"name": "c", "source": src}]})
    assert cfg.streams[0].source.options.expected_fps == 15.0
    src["expected_fps"] = -1
    with pytest.raises(ConfigError, match=r"streams\[0\]\.source\.expected_fps"):
        parse_config({"device_id": "gw", "streams": [{"name": "c", "source": src}]})
