"""Serial sensor boards (USB-serial, UART): line CSV, key=value lines, or binary frames.

The port is reopened by path on every reconnect, so a stable `/dev/serial/by-id/...`
link follows the board across USB re-enumeration (ttyUSB0 -> ttyUSB1). A vanished
device raises SourceDisconnectedError; the runner retries with backoff for as long
as it takes. Parse problems are counted (see framing.py), never raised.

Holes: samples lost on the line (a gap in the frame counter, a frame failing its CRC,
a rejected line) split the data into separate blocks, the one after the hole marked
`gap_before` (with its sequence number advanced by the samples known lost), and so is
the first block after a reopen. A hole of at most `max_fill_samples` samples of known
length (one garbled text line) is bridged by linear interpolation instead, so a noisy
line at 1 line in 20 still leaves windows to score. Sample times are receive times:
the last sample of a read arrived "now", earlier ones are spaced at the measured rate
(the configured one until enough has been measured).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import select
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_agent.errors import SourceDisconnectedError, SourceError
from edge_agent.schema import check
from edge_agent.sources.base import Block, Source
from edge_agent.sources.framing import (
    MAX_FRAME_PAYLOAD,
    MAX_LINE_BYTES,
    BinaryFrameParser,
    CsvLineParser,
    KeyValueLineParser,
    Parsed,
    StreamParser,
)
from edge_agent.sources.rate import RateMeter

__all__ = ["Options", "SerialSource", "make_parser"]

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 64 * 1024  # bounds one read(), hence one block, in memory
_GONE = {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO, errno.EBUSY}


@dataclass(frozen=True)
class Options:
    port: str = field(metadata=check("nonempty"))
    # empty: the model card's channel names (filled in when the stream is built)
    channels: tuple[str, ...] = ()
    format: Literal["binary", "csv", "kv"] = "binary"
    baud: int = field(default=115200, metadata=check("positive"))
    rate_hz: float = field(default=100.0, metadata=check("positive"))
    int16_scale: float = field(default=1.0, metadata=check("positive"))
    max_frame_bytes: int = field(default=MAX_FRAME_PAYLOAD, metadata=check("positive"))
    max_line_bytes: int = field(default=MAX_LINE_BYTES, metadata=check("positive"))
    rate_window_s: float = field(default=10.0, metadata=check("positive"))
    # a hole of at most this many samples of known length (one rejected text line) is
    # bridged by linear interpolation (`filled_samples`); longer ones restart windowing
    max_fill_samples: int = field(default=1, metadata=check("nonneg"))
    # flock the port so a second agent (or a stray minicom) cannot steal bytes
    exclusive: bool = True

    def __post_init__(self) -> None:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels: duplicate names in {list(self.channels)}")


def make_parser(
    fmt: str,
    channels: tuple[str, ...],
    *,
    scale: float = 1.0,
    max_frame_bytes: int = MAX_FRAME_PAYLOAD,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> StreamParser:
    if fmt == "binary":
        return BinaryFrameParser(len(channels), scale=scale, max_payload=max_frame_bytes)
    if fmt == "csv":
        return CsvLineParser(channels, max_line_bytes)
    if fmt == "kv":
        return KeyValueLineParser(channels, max_line_bytes)
    raise ValueError(f"unknown wire format {fmt!r}")


class SerialSource(Source):
    kind = "serial"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self._ser: Any = None
        self._parser = self._new_parser()
        self._next = 0
        self._meter = RateMeter(options.rate_window_s)
        self._hinted = False
        self._pending: collections.deque[Block] = collections.deque()
        self._last: npt.NDArray[np.float32] | None = None  # the last sample, for bridging
        self._gap = False  # the next block follows a hole (reopened device)
        self._warned: set[str] = set()

    def _new_parser(self) -> StreamParser:
        o: Options = self.options
        return make_parser(
            o.format,
            o.channels,
            scale=o.int16_scale,
            max_frame_bytes=o.max_frame_bytes,
            max_line_bytes=o.max_line_bytes,
        )

    @property
    def measured_rate_hz(self) -> float:
        """Samples/s actually received over the last `rate_window_s` (0.0 at first)."""
        return self._meter.rate_hz

    def open(self) -> None:
        import serial  # pyserial; imported here so other source kinds never load it

        o: Options = self.options
        if not self._hinted and not o.port.startswith("/dev/serial/by-"):
            self._hinted = True
            log.info(
                "source %s: port %s may change name on re-plug; prefer /dev/serial/by-id/...",
                self.name,
                o.port,
            )
        try:
            self._ser = serial.Serial(o.port, o.baud, timeout=0, exclusive=o.exclusive)
        except (serial.SerialException, OSError, ValueError) as e:
            code = getattr(e, "errno", None)
            if code in _GONE:
                raise SourceDisconnectedError(f"serial port {o.port}: not present ({e})") from e
            if code == errno.EACCES:
                raise SourceError(
                    f"serial port {o.port}: permission denied; add the service user "
                    "to the 'dialout' group"
                ) from e
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise SourceError(
                    f"serial port {o.port}: in use by another process (exclusive lock held)"
                ) from e
            raise SourceError(f"serial port {o.port}: cannot open: {e}") from e
        self._parser = self._new_parser()
        self._meter.reset()
        self._pending.clear()
        self._gap = True  # whatever the board sent while away is not here
        log.info("source %s: opened %s at %d baud (%s)", self.name, o.port, o.baud, o.format)

    def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            self._account(self._parser.flush())
            with contextlib.suppress(OSError):  # already gone with the device
                ser.close()

    def read(self, timeout: float) -> Block | None:
        import serial

        if self._pending:
            return self._pending.popleft()
        if self._ser is None:
            raise SourceDisconnectedError(f"serial port {self.options.port}: not open")
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                # wait here rather than via ser.timeout: setting that re-runs tcsetattr
                ready, _, _ = select.select([self._ser.fileno()], [], [], remaining)
                if not ready:
                    return None
                data = self._ser.read(READ_CHUNK_BYTES)  # timeout=0: what is there, bounded
            except (serial.SerialException, OSError) as e:
                self.count("disconnects")
                self.close()
                raise SourceDisconnectedError(f"serial port {self.options.port}: {e}") from e
            if not data:
                continue
            parsed = self._parser.feed(data)
            self._account(parsed)
            if len(parsed.samples):
                self._split(parsed)
                return self._pending.popleft()

    def _rate(self) -> float:
        """Measured rate once it spans a few seconds, else the configured one."""
        o: Options = self.options
        if self._meter.span_s >= min(2.0, o.rate_window_s / 2) and self._meter.rate_hz > 0:
            return self._meter.rate_hz
        return float(o.rate_hz)

    def _split(self, parsed: Parsed) -> None:
        """Queue the samples of one read as blocks, cut at every hole (a hole of at most
        max_fill_samples known samples is bridged instead)."""
        now, wall = time.monotonic(), time.time()
        n = len(parsed.samples)
        self._meter.add(now, n)
        rate = self._rate()
        segments: list[tuple[list[npt.NDArray[np.float32]], int, bool]] = []  # rows, skip, gap
        rows: list[npt.NDArray[np.float32]] = []
        prev = None if self._gap else self._last
        skip, gap, lo = 0, self._gap, 0
        for row, lost in [*parsed.breaks, (n, 0)]:
            part = parsed.samples[lo:row]
            if len(part):
                rows.append(part)
                prev = part[-1]
            lo = row
            if row >= n:
                break
            bridged = self._bridge(prev, parsed.samples[row], lost)
            if bridged is not None:
                rows.append(bridged)
                continue
            if rows:
                segments.append((rows, skip, gap))
                rows, skip = [], 0
            skip, gap = skip + lost, True  # numbers of the lost samples stay unused
        if rows:
            segments.append((rows, skip, gap))
        total = sum(k + sum(len(r) for r in rs) for rs, k, _ in segments)
        last_seq = self._next + total - 1
        for rs, k, g in segments:
            self._next += k
            data = np.concatenate(rs) if len(rs) > 1 else rs[0]
            # the data carries no clock: its last sample arrived "now"
            t0 = wall - (last_seq - self._next) / rate
            self._pending.append(Block(data, t0, self._next, rate, g))
            self._next += len(data)
        self.note_clock(n)
        if prev is not None:
            self._last = prev
        self._gap = False

    def _bridge(
        self,
        before: npt.NDArray[np.float32] | None,
        after: npt.NDArray[np.float32],
        lost: int,
    ) -> npt.NDArray[np.float32] | None:
        """Linear interpolation over a hole of `lost` samples (known length, at most
        max_fill_samples, with a sample on each side), counted; None: a real hole."""
        if before is None or not 0 < lost <= self.options.max_fill_samples:
            return None
        w = (np.arange(1, lost + 1, dtype=np.float32) / np.float32(lost + 1))[:, None]
        self.count("filled_samples", lost)
        out: npt.NDArray[np.float32] = (before + (after - before) * w).astype(np.float32)
        return out

    def _account(self, parsed: Parsed) -> None:
        if parsed.frames:
            self.count("frames", parsed.frames)
        for what, k in parsed.errors.items():
            self.count(what, k)
        if parsed.errors.get("decimal_comma_lines") and "decimal" not in self._warned:
            self._warned.add("decimal")
            log.warning(
                "source %s: lines look written with decimal commas ('3,14'); the csv "
                "format needs a '.' decimal mark and ',' between values: change the "
                "board's output (lines are dropped and counted as decimal_comma_lines)",
                self.name,
            )


SOURCE_CLASS = SerialSource
