"""Camera source on a video file the test writes with OpenCV (skipped without cv2)."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.sources.camera import CameraSource, Options
from edge_agent.sources.runner import SourceRunner, SourceState

cv2 = pytest.importorskip("cv2")
pytestmark = pytest.mark.camera

FPS = 30.0
N_FRAMES = 45  # 1.5 s at 30 fps


def _video(path: Path, n: int = N_FRAMES) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (32, 24))
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((24, 32, 3), 5 * i, np.uint8))  # brightness encodes the index
    w.release()
    return path


def _index(samples: np.ndarray) -> int:
    return round(float(samples.mean()) * 255 / 5)


def test_frames_flow_resized_and_normalised(tmp_path: Path) -> None:
    src = CameraSource(
        "cam", Options(url=str(_video(tmp_path / "v.avi")), width=8, height=6, fps_cap=100)
    )
    src.open()
    try:
        blk = None
        deadline = time.monotonic() + 3
        while blk is None and time.monotonic() < deadline:
            blk = src.read(0.5)
        assert blk is not None
        assert blk.samples.shape == (1, 48)
        assert blk.samples.dtype == np.float32
        assert 0.0 <= blk.samples.min() <= blk.samples.max() <= 1.0
    finally:
        src.close()


def test_latest_frame_policy_under_a_slow_model(tmp_path: Path) -> None:
    src = CameraSource("cam", Options(url=str(_video(tmp_path / "v.avi")), fps_cap=100))
    r = SourceRunner(src, max_blocks=64)
    r.start()
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 5
        while not r.done and time.monotonic() < deadline:
            for b in r.get(0.2):
                seen.append(_index(b.samples))
                time.sleep(0.2)  # a slow model: ~5 frames/s against a 30 fps camera
        assert r.state is SourceState.FINISHED  # end of file reported
        assert src.snapshot_counters()["end_of_stream"] == 1
        assert len(seen) <= 12  # ~1.5 s of video at <= 5 per s, not 45 queued frames
        assert seen == sorted(seen)
        assert seen[-1] >= N_FRAMES - 8  # the last frame scored is recent, not a backlog
        # the runner queue is capped at one block for cameras: replaced frames are counted
        skipped = src.snapshot_counters().get("frames_skipped", 0) + r.dropped_blocks
        assert skipped >= N_FRAMES - len(seen) - 2
    finally:
        r.stop()


def test_fps_cap_limits_delivered_frames(tmp_path: Path) -> None:
    src = CameraSource("cam", Options(url=str(_video(tmp_path / "v.avi")), fps_cap=4))
    src.open()
    try:
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.0:
            if src.read(0.1) is not None:
                n += 1
        assert 3 <= n <= 5
    finally:
        src.close()


def test_missing_stream_is_retried_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "later.avi"
    src = CameraSource("cam", Options(url=str(path), fps_cap=100))
    r = SourceRunner(src, backoff_min_s=0.05, backoff_max_s=0.1)
    r.start()
    try:
        deadline = time.monotonic() + 3
        while r.state is not SourceState.RECONNECTING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.state is SourceState.RECONNECTING
        assert "cannot open" in r.last_error
        _video(tmp_path / "tmp.avi").rename(path)
        got = []
        deadline = time.monotonic() + 3
        while not got and time.monotonic() < deadline:
            got = r.get(0.1)
        assert got
    finally:
        r.stop()


def test_live_stream_that_stops_is_reported_lost_and_reopened(tmp_path: Path) -> None:
    """A URL (file:// here, as FFmpeg reads it like rtsp://) is a live stream: when it
    stops delivering, that is `stream_lost`, not the end, and the runner reopens it."""
    url = (tmp_path / "cam.avi").as_uri()
    _video(tmp_path / "cam.avi", n=10)
    src = CameraSource("cam", Options(url=url, fps_cap=100))
    r = SourceRunner(src, backoff_min_s=0.05, backoff_max_s=0.1)
    r.start()
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 60

        def went_back() -> bool:
            return any(b < a for a, b in itertools.pairwise(seen))

        # Until lost twice and a frame after a reopen seen: a slow (loaded) consumer gets
        # only the latest frame, so a reopen's first frames may go unseen ([0, 9, 9]).
        while (
            src.snapshot_counters().get("stream_lost", 0) < 2 or not went_back()
        ) and time.monotonic() < deadline:
            seen += [_index(b.samples) for b in r.get(0.05)]
        assert src.snapshot_counters()["stream_lost"] >= 2  # lost, reopened, lost again
        assert r.disconnects >= 2  # the runner took each loss as a disconnect: reconnecting
        assert r.restarts == 0  # ...which does not spend the restart budget
        assert not src.finished  # a live stream never "finishes"
        assert "stream lost" in r.last_error
        # frames flowed again after the reopen: the index went back to the start
        assert any(b < a for a, b in itertools.pairwise(seen)), seen
    finally:
        r.stop()


def test_cv2_not_imported_by_other_sources() -> None:
    import subprocess

    code = (
        "import sys, edge_agent.config, edge_agent.sources.serial, edge_agent.sources.registry;"
        "print('cv2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_nominal_rate_is_the_cameras_own_once_open(tmp_path: Path) -> None:
    video = str(_video(tmp_path / "v.avi"))
    src = CameraSource("cam", Options(url=video, fps_cap=5))
    assert src.nominal_rate_hz is None  # not known before the first open
    src.open()
    try:
        assert src.nominal_rate_hz == pytest.approx(FPS)  # the file's, not fps_cap
    finally:
        src.close()
    unpaced = CameraSource("cam", Options(url=video, fps_cap=5, realtime=False))
    unpaced.open()
    try:
        assert unpaced.nominal_rate_hz is None  # as fast as it decodes: no rate to check
    finally:
        unpaced.close()
