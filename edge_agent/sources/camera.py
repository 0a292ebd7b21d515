"""Cameras (device index, video file, RTSP/HTTP URL) via OpenCV, imported only in open().

Latest-frame policy: a grabber thread keeps only the newest frame; a slow model
skips frames (counted, `frames_skipped`) instead of building a backlog, so what it
scores is always current. Each delivered frame is grayscale, resized, scaled to
[0, 1] and flattened: Block.samples has shape (1, height*width), one frame = one
window. A file is paced at its own frame rate, like a live camera; its end sets
`finished` (or loops). A lost live stream raises SourceDisconnectedError, so the
runner shows `reconnecting` and reopens it with backoff.

The rate the sensor-health check expects: `expected_fps` when configured, else what
the driver reports for a device or a paced file; a network stream (rtsp://, http://)
often carries no rate and OpenCV reports a default (25) for it, so its rate is learned
from the first `LEARN_S` seconds of delivery instead. Each block's time is the time its
frame was grabbed; a block after skipped frames is marked `gap_before`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import SourceDisconnectedError, SourceError
from edge_agent.schema import check
from edge_agent.sources.base import Block, Source

__all__ = ["CameraSource", "Options", "prepare_frame"]

log = logging.getLogger(__name__)

_FAIL_READS = 5  # consecutive failed grabs on a live stream = lost
LEARN_S = 5.0  # a network stream's delivered rate is measured over this long


@dataclass(frozen=True)
class Options:
    url: str = ""  # file path or rtsp://... ; empty = use `device`
    device: int = -1  # camera index (/dev/videoN); -1 = use `url`
    width: int = field(default=64, metadata=check("positive"))
    height: int = field(default=64, metadata=check("positive"))
    fps_cap: float = field(default=5.0, metadata=check("positive"))
    # the camera's nominal frame rate, for the sensor-health rate check; 0: what the
    # driver reports (a network stream: learned from its first seconds of delivery)
    expected_fps: float = field(default=0.0, metadata=check("nonneg"))
    normalise: bool = True  # float32 in [0, 1]; else raw 0..255
    loop: bool = False  # restart a file at its end (demo, tests)
    # pace a file at its own frame rate like a live camera; false: as fast as it
    # decodes (re-inspecting a recording, benchmarks); the latest-frame policy holds
    realtime: bool = True

    def __post_init__(self) -> None:
        if bool(self.url) == (self.device >= 0):
            raise ValueError("camera: set exactly one of url (file/RTSP) or device (index)")


class CameraSource(Source):
    kind = "camera"
    max_queue_blocks = 1  # the runner queue keeps the latest frame too

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self._cap: Any = None
        self._cv = threading.Condition()
        self._latest: tuple[npt.NDArray[np.uint8], float, int] | None = None
        self._grabbed = 0
        self._eof = False
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_delivered = 0.0
        self._is_file = False
        self._camera_fps: float | None = None
        self._learn: tuple[float, int] | None = None  # (first grab time, grabs since)
        self._prev_index = 0  # frame number of the last delivered frame

    @property
    def channels(self) -> tuple[str, ...]:
        return (f"pixels_{self.options.height}x{self.options.width}",)

    @property
    def columns(self) -> int:
        return int(self.options.height * self.options.width)

    @property
    def rate_hz(self) -> float:
        return float(self.options.fps_cap)

    @property
    def nominal_rate_hz(self) -> float | None:
        """The frame rate the camera should deliver, whatever fps_cap lets through to the
        model: `expected_fps` if set, else the driver's report (a device, a paced file) or
        the rate learned from a network stream. None before it is known, for an unpaced
        file, or when the reported rate is not plausible."""
        return self._camera_fps

    def open(self) -> None:
        try:
            import cv2
        except ImportError as e:
            raise SourceError(
                "camera source needs OpenCV: pip install opencv-python-headless (the camera extra)"
            ) from e
        o: Options = self.options
        target: str | int = o.url if o.url else o.device
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise SourceDisconnectedError(f"camera {target!r}: cannot open")
        self._is_file = bool(o.url) and "://" not in o.url
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._cap = cap
        self._eof = self._lost = False
        self._latest = None
        self._stop.clear()
        period = 1.0 / fps if self._is_file and o.realtime and 0 < fps < 1000 else 0.0
        paced = not self._is_file or o.realtime
        network = "://" in o.url
        if not paced:
            self._camera_fps = None
        elif o.expected_fps > 0:
            self._camera_fps = float(o.expected_fps)
        elif network:
            self._learn = None  # kept if learned already: a reconnect is the same camera
        else:
            self._camera_fps = fps if 0 < fps < 1000 else None
        self._thread = threading.Thread(
            target=self._grab, args=(cap, period), name=f"cam-{self.name}", daemon=True
        )
        self._thread.start()
        log.info("source %s: camera %r open (%.1f fps reported)", self.name, target, fps)

    def _grab(self, cap: Any, period: float) -> None:
        fails = 0
        next_due = time.monotonic()
        while not self._stop.is_set():
            ok, frame = cap.read()
            if not ok:
                if self._is_file and self.options.loop:
                    cap.set(1, 0)  # CAP_PROP_POS_FRAMES: rewind
                    continue
                fails += 1
                if self._is_file or fails >= _FAIL_READS:
                    with self._cv:
                        self._eof, self._lost = self._is_file, not self._is_file
                        self._cv.notify_all()
                    return
                continue
            fails = 0
            with self._cv:
                if self._latest is not None:
                    self.count("frames_skipped")  # the latest-frame policy at work
                self._grabbed += 1
                now = time.time()
                self._latest = (frame, now, self._grabbed)
                self._learn_rate(now)
                self._cv.notify_all()
            if period:
                next_due += period
                self._stop.wait(max(0.0, next_due - time.monotonic()))

    def _learn_rate(self, now: float) -> None:
        """A network stream without expected_fps: its rate is what it delivers first."""
        o: Options = self.options
        if self._camera_fps is not None or o.expected_fps > 0 or "://" not in o.url:
            return
        if self._learn is None:
            self._learn = (now, 0)
            return
        first, n = self._learn[0], self._learn[1] + 1
        self._learn = (first, n)
        if now - first >= LEARN_S:
            self._camera_fps = n / (now - first)
            log.info(
                "source %s: camera delivers %.1f fps (learned; set expected_fps to fix it)",
                self.name,
                self._camera_fps,
            )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def read(self, timeout: float) -> Block | None:
        deadline = time.monotonic() + timeout
        # frame-rate cap: a model never needs more frames than it can score
        due = self._last_delivered + 1.0 / self.options.fps_cap
        wait = due - time.monotonic()
        if wait > 0:
            if wait > timeout:
                time.sleep(timeout)
                return None
            time.sleep(wait)
        with self._cv:
            while self._latest is None and not (self._eof or self._lost):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
            latest, self._latest = self._latest, None
            eof, lost = self._eof, self._lost
        if latest is None:
            if eof:
                self.finished = True
                self.count("end_of_stream")
                return None
            if lost:
                self.count("stream_lost")
                raise SourceDisconnectedError(f"camera {self.options.url!r}: stream lost")
            return None
        frame, ts, index = latest
        self._last_delivered = time.monotonic()
        self.count("frames")
        self.note_clock(1)
        skipped = index - self._prev_index > 1
        self._prev_index = index
        # frame numbers count at the camera's rate (fps_cap only thins what is scored)
        rate = self._camera_fps or float(self.options.fps_cap)
        return Block(self._prepare(frame), ts, index - 1, rate, skipped)

    def _prepare(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        o: Options = self.options
        return prepare_frame(frame, o.width, o.height, normalise=o.normalise)


def prepare_frame(
    frame: npt.NDArray[np.uint8], width: int, height: int, *, normalise: bool = True
) -> npt.NDArray[np.float32]:
    """BGR or gray uint8 frame -> (1, height*width) float32 grayscale, area-resized,
    scaled to [0, 1] when `normalise`. The one definition an image model is trained
    with (scripts/build_image_models.py) and scored with on the device."""
    import cv2

    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    small = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
    out: npt.NDArray[np.float32] = np.asarray(small, dtype=np.float32).reshape(1, height * width)
    if normalise:
        out *= np.float32(1.0 / 255.0)
    return out


SOURCE_CLASS = CameraSource
