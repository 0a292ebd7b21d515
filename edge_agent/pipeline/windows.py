"""Sliding windows over a sample stream, cut from a preallocated buffer.

Pure (no I/O, no clock). Windows come out as one contiguous (k, window, channels)
array per push, made with a strided view: no per-sample Python loop. A hole (a gap
in the sample sequence, or one the source reports with `gap=True`: a reconnect, a
damaged frame, a time jump) restarts windowing, so no window ever spans it. Windows
holding a sample marked bad (NaN/inf, or flagged by sensor health) are counted and
withheld from scoring.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Windower", "Windows", "samples_needed"]


def samples_needed(window: int, hop: int, windows: int) -> int:
    """Samples that make exactly `windows` windows of `window` samples, `hop` apart."""
    return window + (windows - 1) * hop


@dataclass(frozen=True)
class Windows:
    data: npt.NDArray[np.float32]  # (k, window, channels), all finite
    starts: npt.NDArray[np.int64]  # absolute index of each window's first sample
    skipped: int  # windows withheld because they held a bad sample


class Windower:
    def __init__(self, window: int, hop: int, channels: int) -> None:
        if window <= 0 or hop <= 0:
            raise ValueError("window and hop must be positive")
        self.window, self.hop, self.channels = window, hop, channels
        self._alloc(max(4 * window, 1024))
        self._len = 0
        self._buf_start = 0  # absolute index of _buf[0]
        self._next_start = 0  # absolute index where the next window starts
        self._expected: int | None = None  # next sample index we expect
        self.gaps = 0  # holes that restarted windowing (not counted for 1-sample windows)
        self.lost_samples = 0  # samples known lost in those holes (by sequence number)
        self._any_bad = False  # fast path: most buffers hold no bad sample at all

    def push(
        self,
        samples: npt.NDArray[np.float32],
        seq: int,
        bad: npt.NDArray[np.bool_] | None = None,
        *,
        gap: bool = False,
    ) -> Windows:
        """Windows completed by `samples` (n, channels), the first at index `seq`.
        `gap`: a hole precedes them even if `seq` follows on (e.g. a reconnect)."""
        n = len(samples)
        if samples.ndim != 2 or samples.shape[1] != self.channels:
            raise ValueError(f"expected (n, {self.channels}) samples, got {samples.shape}")
        if self._expected is not None and (gap or seq != self._expected):
            if seq > self._expected:
                self.lost_samples += seq - self._expected
            # a 1-sample window (a camera frame) cannot span a hole: nothing to count
            if self.window > 1:
                self.gaps += 1
            self._len = 0
            self._any_bad = False
            self._buf_start = self._next_start = seq
        elif self._expected is None:
            self._buf_start = self._next_start = seq
        self._expected = seq + n
        self._drop_consumed()
        buf, badb = self._space(n)
        buf[self._len : self._len + n] = samples
        # One reduction tells whether any sample is NaN/inf (or huge): then look per row.
        if bad is not None or not np.isfinite(samples.sum()):
            badm = ~np.isfinite(samples).all(axis=1)
            if bad is not None:
                badm |= bad
            badb[self._len : self._len + n] = badm
            self._any_bad = self._any_bad or bool(badm.any())
        else:
            badb[self._len : self._len + n] = False
        self._len += n
        out = self._cut(buf, badb)
        if buf is not self._buf:  # windowed in the scratch buffer
            self._keep_needed(buf, badb)
        return out

    def samples_to_next_window(self) -> int:
        """Samples still to come before the next window is complete (>= 1), assuming
        they follow on without a hole."""
        if self._expected is None:
            return self.window
        return max(1, self._next_start + self.window - self._expected)

    def rescale(self, scale: npt.NDArray[np.float32], offset: npt.NDArray[np.float32]) -> None:
        """Map buffered samples x -> x * scale + offset per channel (a model swap with
        other normalisation statistics), so partial windows survive the swap."""
        self._buf[: self._len] *= scale
        self._buf[: self._len] += offset

    def _drop_consumed(self) -> None:
        """Drop what no future window needs. (With hop > window the next start can lie
        beyond what has arrived.)"""
        if self._next_start > self._buf_start and self._len > 0:
            self._keep_needed(self._buf, self._bad)

    def _space(self, n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Where the buffered samples and `n` more are windowed: the stream's own buffer
        when they fit, else this thread's scratch buffer (the buffered samples copied
        in), or for a huge block the own buffer grown."""
        need = self._len + n
        if need <= self._cap:
            return self._buf, self._bad
        if need * self.channels * 4 <= SCRATCH_MAX_BYTES:
            buf, badb = _scratch(need, self.channels)
            buf[: self._len] = self._buf[: self._len]
            badb[: self._len] = self._bad[: self._len]
            return buf, badb
        self._grow(need)
        return self._buf, self._bad

    def _alloc(self, cap: int) -> None:
        """A new own buffer for `cap` samples (what the old one held is not copied)."""
        self._cap = cap
        self._buf = np.empty((cap, self.channels), dtype=np.float32)
        self._bad = np.zeros(cap, dtype=bool)

    def _grow(self, need: int) -> None:
        buf, badb = self._buf, self._bad
        self._alloc(2 * need)
        self._buf[: self._len] = buf[: self._len]
        self._bad[: self._len] = badb[: self._len]

    def _keep_needed(self, buf: npt.NDArray[np.float32], badb: npt.NDArray[np.bool_]) -> None:
        """What future windows need of the buffered samples in `buf` (the stream's own
        buffer, or this thread's scratch buffer a push was windowed in), moved to the
        front of the stream's own buffer."""
        drop = min(self._next_start - self._buf_start, self._len)
        keep = self._len - drop
        if keep > self._cap:  # (from the scratch buffer; the own one holds 4 windows)
            self._alloc(2 * keep)
        self._buf[:keep] = buf[drop : drop + keep]
        self._bad[:keep] = badb[drop : drop + keep]
        self._len, self._buf_start = keep, self._buf_start + drop
        if self._any_bad:
            self._any_bad = bool(self._bad[:keep].any())

    def _cut(self, buf: npt.NDArray[np.float32], badb: npt.NDArray[np.bool_]) -> Windows:
        first = self._next_start - self._buf_start
        avail = self._len - first - self.window
        if avail < 0:
            return Windows(np.empty((0, self.window, self.channels), np.float32), _NO_STARTS, 0)
        k = avail // self.hop + 1
        w, hop = self.window, self.hop
        rs, cs = buf.strides
        # (k, window, channels) view onto the buffer, then one contiguous copy for the model
        view: npt.NDArray[np.float32] = np.ndarray(
            (k, w, self.channels), np.float32, buf, first * rs, (hop * rs, rs, cs)
        )
        rel = hop * np.arange(k)
        starts = self._buf_start + first + rel
        self._next_start += k * hop
        if not self._any_bad:
            return Windows(view.copy(), starts, 0)
        # bad samples per window from a running count: no (k, window) mask needed
        counts = np.concatenate(([0], np.cumsum(badb[first : first + rel[-1] + w])))
        good = (counts[rel + w] - counts[rel]) == 0
        return Windows(view[good].copy(), starts[good], int(k - good.sum()))


_NO_STARTS = np.empty(0, dtype=np.int64)
# A turn's samples are windowed in a buffer of its thread's (a stream's own buffer keeps
# only what its next windows need): the few workers that run every stream's turns write
# and cut in memory still in their cache, not in one buffer per stream gone cold since
# that stream's last turn. Larger pushes grow the stream's own buffer, as before.
SCRATCH_MAX_BYTES = 4 << 20
_local = threading.local()


def _scratch(rows: int, channels: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """This thread's scratch buffer as (rows, channels) float32 and (rows,) bool."""
    flat: npt.NDArray[np.float32] | None = getattr(_local, "flat", None)
    bad: npt.NDArray[np.bool_] | None = getattr(_local, "bad", None)
    if flat is None or bad is None or len(flat) < rows * channels or len(bad) < rows:
        size = max(rows * channels * 5 // 4, 1 << 16)  # room for a slightly larger turn
        rows_cap = size // channels
        flat = _local.flat = np.empty(size, dtype=np.float32)
        bad = _local.bad = np.zeros(rows_cap, dtype=bool)
    return flat[: rows * channels].reshape(rows, channels), bad[:rows]
