"""Byte-stream parsers for sensor wire formats. Pure: bytes in, samples and counts out.

Three formats (documented for firmware authors in docs/serial-protocol.md):
- `csv`:    one sample per line, `v1,v2,...` in configured channel order.
- `kv`:     one sample per line, `name=value` pairs separated by `,`, `;` or spaces.
- `binary`: framed blocks with sync bytes, a typed payload and a CRC-16/CCITT-FALSE.

Parsers are incremental: `feed()` takes whatever bytes arrived (any split, partial
frames included) and returns the samples completed so far. Bad input never raises:
it is counted by name in `Parsed.errors` and the parser resynchronises. Where samples
were lost (a gap in the frame counter, a rejected line) `Parsed.breaks` says so, so the
caller never joins the samples on either side of the hole.
"""

from __future__ import annotations

import binascii
import enum
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "FRAME_VERSION",
    "HEADER",
    "MAX_FRAME_PAYLOAD",
    "MAX_LINE_BYTES",
    "SYNC",
    "BinaryFrameParser",
    "CsvLineParser",
    "KeyValueLineParser",
    "Parsed",
    "SampleType",
    "StreamParser",
    "crc16_ccitt_false",
    "encode_frame",
    "looks_like_decimal_commas",
]

SYNC = b"\xa5\x5a"
FRAME_VERSION = 1
# sync(2) version(1) length(2) type(1) samples(2) channels(1) frame_seq(2), little-endian
HEADER = struct.Struct("<2sBHBHBH")
_CRC = struct.Struct("<H")
MAX_FRAME_PAYLOAD = 8192  # bytes; a larger length field is taken as garbage, not allocated
MAX_LINE_BYTES = 1024  # a longer "line" is noise (wrong baud rate, binary data): dropped


class SampleType(enum.IntEnum):
    FLOAT32 = 1  # IEEE-754 little-endian
    INT16 = 2  # signed little-endian; physical value = raw * configured scale


_DTYPES: dict[int, np.dtype[Any]] = {
    SampleType.FLOAT32: np.dtype("<f4"),
    SampleType.INT16: np.dtype("<i2"),
}


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor.

    binascii.crc_hqx is exactly this polynomial, unreflected, with the init passed in.
    Check value: crc16_ccitt_false(b"123456789") == 0x29B1.
    """
    return binascii.crc_hqx(data, 0xFFFF)


def encode_frame(
    samples: npt.ArrayLike,
    *,
    sample_type: SampleType = SampleType.FLOAT32,
    frame_seq: int = 0,
    scale: float = 1.0,
) -> bytes:
    """One binary frame for `samples` (n, channels); int16 values are `round(v / scale)`.

    Used by tests, the benchmark and the MQTT packed format; firmware does the same in C.
    """
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"samples must be 2-D (n, channels), got shape {arr.shape}")
    n, ch = arr.shape
    if sample_type is SampleType.INT16:
        payload = np.round(arr / scale).astype("<i2").tobytes()
    else:
        payload = arr.astype("<f4").tobytes()
    if len(payload) > 0xFFFF or n > 0xFFFF or ch > 0xFF:
        raise ValueError("frame too large for the header fields")
    head = HEADER.pack(SYNC, FRAME_VERSION, len(payload), sample_type, n, ch, frame_seq & 0xFFFF)
    body = head[2:] + payload
    return head[:2] + body + _CRC.pack(crc16_ccitt_false(body))


@dataclass
class Parsed:
    """What one `feed()` produced: samples (n, channels) float32 and counted problems."""

    samples: npt.NDArray[np.float32]
    frames: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    # (row, lost): a hole right before samples[row] (row 0: before this feed's first
    # sample), with the number of samples known lost in it (0 = unknown)
    breaks: list[tuple[int, int]] = field(default_factory=list)


class StreamParser(Protocol):
    def feed(self, data: bytes) -> Parsed: ...

    def flush(self) -> Parsed:
        """The byte stream ended (device closed): resolve or drop what is buffered."""
        ...


def _stack(rows: list[npt.NDArray[np.float32]], channels: int) -> npt.NDArray[np.float32]:
    if not rows:
        return np.empty((0, channels), dtype=np.float32)
    if len(rows) == 1:
        return rows[0]
    return np.concatenate(rows).astype(np.float32, copy=False)


class BinaryFrameParser:
    """Incremental parser for the framed binary format.

    Resync rule: on any bad header or CRC mismatch, drop ONE byte and search for the
    next sync pair. A false sync inside garbage therefore never hides a real frame
    that starts inside the bytes it claimed. Lost frames are seen as gaps in the
    16-bit frame counter.
    """

    def __init__(
        self,
        channels: int,
        *,
        scale: float = 1.0,
        max_payload: int = MAX_FRAME_PAYLOAD,
    ) -> None:
        self.channels = channels
        self.scale = scale
        self.max_payload = max_payload
        self._buf = bytearray()
        self._last_seq: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> Parsed:
        self._buf += data
        return self._drain(final=False)

    def flush(self) -> Parsed:
        out = self._drain(final=True)
        self._buf.clear()
        self._last_seq = None  # a reconnected device may restart its counter
        return out

    def _drain(self, *, final: bool) -> Parsed:  # noqa: PLR0912, PLR0915 - one state machine
        buf = self._buf
        rows: list[npt.NDArray[np.float32]] = []
        errors: Counter[str] = Counter()
        breaks: list[tuple[int, int]] = []
        done = 0  # samples decoded so far in this call
        frames = 0
        pos = 0
        hsize = HEADER.size
        while True:
            start = buf.find(SYNC, pos)
            if start < 0:
                # keep a trailing 0xA5: it may be the first half of the next sync
                keep = 1 if buf and buf[-1] == SYNC[0] and not final else 0
                skipped = len(buf) - pos - keep
                if skipped > 0:
                    errors["garbage_bytes"] += skipped
                pos = len(buf) - keep
                break
            if start > pos:
                errors["garbage_bytes"] += start - pos
            pos = start
            if len(buf) - pos < hsize:
                if final:
                    errors["partial_frames"] += 1
                    errors["garbage_bytes"] += len(buf) - pos
                    pos = len(buf)
                break
            _, ver, length, stype, n, ch, seq = HEADER.unpack_from(buf, pos)
            problem = self._check_header(ver, length, stype, n, ch)
            if problem:
                errors[problem] += 1
                errors["garbage_bytes"] += 1
                pos += 1
                continue
            end = pos + hsize + length + _CRC.size
            if len(buf) < end:
                if not final:
                    break
                # stream ended inside this candidate: it was garbage or a cut frame;
                # step past its sync and keep looking for whole frames after it
                errors["partial_frames"] += 1
                errors["garbage_bytes"] += 1
                pos += 1
                continue
            (crc,) = _CRC.unpack_from(buf, end - _CRC.size)
            if crc != crc16_ccitt_false(bytes(buf[pos + 2 : end - _CRC.size])):
                errors["crc_errors"] += 1
                errors["garbage_bytes"] += 1
                pos += 1
                continue
            if ch != self.channels:
                errors["channel_mismatch"] += 1
            else:
                rows.append(self._decode(bytes(buf[pos + hsize : end - _CRC.size]), stype, n))
                frames += 1
                lost = self._sequence(seq, errors)
                if lost:  # frames missing before this one: assume they were as long
                    breaks.append((done, lost * n))
                done += n
            pos = end
        del buf[:pos]
        return Parsed(_stack(rows, self.channels), frames, errors, breaks)

    def _decode(self, payload: bytes, stype: int, n: int) -> npt.NDArray[np.float32]:
        raw = np.frombuffer(payload, dtype=_DTYPES[stype])
        vals = raw.reshape(n, self.channels).astype(np.float32)
        if stype == SampleType.INT16 and self.scale != 1.0:
            vals *= np.float32(self.scale)
        return vals

    def _sequence(self, seq: int, errors: Counter[str]) -> int:
        """Frames lost before frame `seq` (a gap in the counter), counted."""
        gap = 0
        if self._last_seq is not None:
            gap = (seq - self._last_seq - 1) & 0xFFFF
            if gap:
                errors["lost_frames"] += gap
        self._last_seq = seq
        return gap

    def _check_header(self, ver: int, length: int, stype: int, n: int, ch: int) -> str:
        if ver != FRAME_VERSION:
            return "bad_version"
        if stype not in _DTYPES:
            return "bad_sample_type"
        if length > self.max_payload:
            return "oversized_frames"
        if n == 0 or ch == 0 or length != n * ch * _DTYPES[stype].itemsize:
            return "bad_length"
        return ""


class _LineParser:
    """Shared line splitting: a line ends at LF, CR LF or a lone CR (old Mac-style
    firmware); bounded line length, ASCII only. A rejected line is a hole: the next
    good sample is reported after a break."""

    def __init__(self, channels: tuple[str, ...], max_line: int = MAX_LINE_BYTES) -> None:
        self.channels = channels
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line: drop until its newline
        self._hole = 0  # lines rejected since the last good sample
        self._breaks: list[tuple[int, int]] = []

    def feed(self, data: bytes) -> Parsed:
        # CR alone ends a line too; CR LF becomes an empty line, which is skipped
        self._buf += data.replace(b"\r", b"\n")
        errors: Counter[str] = Counter()
        rows: list[list[float]] = []
        self._breaks = []
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(self._buf[start:nl])
            start = nl + 1
            if self._discarding:
                self._discarding = False
                continue
            self._one(line, rows, errors)
        del self._buf[:start]
        if len(self._buf) > self.max_line:
            errors["oversized_lines"] += 1
            self._hole += 1
            self._buf.clear()
            self._discarding = True
        return self._result(rows, errors)

    def flush(self) -> Parsed:
        errors: Counter[str] = Counter()
        if self._buf and not self._discarding:
            errors["partial_lines"] += 1
        self._buf.clear()
        self._discarding = False
        self._hole = 0  # the device closed: whoever reopens it marks that hole
        self._breaks = []
        return self._result([], errors)

    def _result(self, rows: list[list[float]], errors: Counter[str]) -> Parsed:
        n_ch = len(self.channels)
        arr = np.array(rows, dtype=np.float32).reshape(len(rows), n_ch)
        return Parsed(arr, len(rows), errors, self._breaks)

    def _one(self, line: bytes, rows: list[list[float]], errors: Counter[str]) -> None:
        if len(line) > self.max_line:
            errors["oversized_lines"] += 1
            self._hole += 1
            return
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            errors["bad_lines"] += 1
            self._hole += 1
            return
        if not text or text.startswith("#"):
            return  # blank lines and comments (board banners) are not samples
        row = self._parse(text, errors)
        if row is None:
            self._hole += 1  # one line was one sample
            return
        if self._hole:
            self._breaks.append((len(rows), self._hole))
            self._hole = 0
        rows.append(row)

    def _parse(self, text: str, errors: Counter[str]) -> list[float] | None:
        raise NotImplementedError


def _value(tok: str, errors: Counter[str]) -> float:
    """One reading; unparsable or non-finite becomes NaN (an invalid reading), counted."""
    try:
        v = float(tok)
    except ValueError:
        errors["bad_values"] += 1
        return math.nan
    return v


_DECIMAL_COMMA = re.compile(r"[-+]?\d+,\d+")


def looks_like_decimal_commas(fields: list[str]) -> bool:
    """True when values were written with a decimal comma ("3,14"): either fields that
    are such numbers, or a comma-split line of whole numbers twice as long as expected."""
    return any(_DECIMAL_COMMA.fullmatch(f.strip()) for f in fields)


class CsvLineParser(_LineParser):
    """`1.25,-0.5,3.0` -- exactly one value per configured channel, else the line is bad.
    Lines that look written with decimal commas (`3,14;2,71`, or twice the fields) are
    also counted as `decimal_comma_lines`: the board must send `3.14`."""

    def _parse(self, text: str, errors: Counter[str]) -> list[float] | None:
        parts = text.split(",")
        if len(parts) != len(self.channels):
            errors["bad_lines"] += 1
            if self._decimal_commas(text, parts):
                errors["decimal_comma_lines"] += 1
            return None
        return [_value(p, errors) for p in parts]

    def _decimal_commas(self, text: str, parts: list[str]) -> bool:
        n = len(self.channels)
        if len(parts) == 2 * n and all(p.strip().lstrip("+-").isdigit() for p in parts):
            return True
        fields = re.split(r"[;\t ]+", text)
        return len(fields) == n and looks_like_decimal_commas(fields)


_KV_SPLIT = re.compile(r"[,;\s]+")


class KeyValueLineParser(_LineParser):
    """`ax=1.0 ay=2.0 temp=21.5` -- channels missing from a line are NaN (counted);
    names not configured are ignored (counted, so a firmware typo is visible)."""

    def __init__(self, channels: tuple[str, ...], max_line: int = MAX_LINE_BYTES) -> None:
        super().__init__(channels, max_line)
        self._index = {c: i for i, c in enumerate(channels)}

    def _parse(self, text: str, errors: Counter[str]) -> list[float] | None:
        row = [math.nan] * len(self.channels)
        seen = 0
        for tok in _KV_SPLIT.split(text):
            if not tok:
                continue
            key, sep, val = tok.partition("=")
            if not sep:
                errors["bad_lines"] += 1
                return None
            i = self._index.get(key.strip())
            if i is None:
                errors["unknown_keys"] += 1
                continue
            row[i] = _value(val, errors)
            seen += 1
        if seen == 0:
            errors["bad_lines"] += 1
            return None
        if seen < len(self.channels):
            errors["missing_values"] += len(self.channels) - seen
        return row
