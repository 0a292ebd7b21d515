"""Sliding windows over a sample stream, cut from a preallocated buffer.

Pure (no I/O, no clock). Windows come out as one contiguous (k, window, channels)
array per push, made with a strided view: no per-sample Python loop. A hole (a gap
in the sample sequence, or one the source reports with `gap=True`: a reconnect, a
damaged frame, a time jump) restarts windowing, so no window ever spans it. Windows
holding a sample marked bad (NaN/inf, or flagged by sensor health) are counted and
withheld from scoring.
"""

from __future__ import annotations

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
        self._cap = max(4 * window, 1024)
        self._buf = np.empty((self._cap, channels), dtype=np.float32)
        self._bad = np.zeros(self._cap, dtype=bool)
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
        self._ensure(n)
        self._buf[self._len : self._len + n] = samples
        # One reduction tells whether any sample is NaN/inf (or huge): then look per row.
        if bad is not None or not np.isfinite(samples.sum()):
            badm = ~np.isfinite(samples).all(axis=1)
            if bad is not None:
                badm |= bad
            self._bad[self._len : self._len + n] = badm
            self._any_bad = self._any_bad or bool(badm.any())
        else:
            self._bad[self._len : self._len + n] = False
        self._len += n
        return self._cut()

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

    def _ensure(self, n: int) -> None:
        # Drop what no future window needs, then grow only if a huge block demands it.
        # (With hop > window the next start can lie beyond what has arrived.)
        drop = min(self._next_start - self._buf_start, self._len)
        if drop > 0:
            keep = self._len - drop
            self._buf[:keep] = self._buf[drop : self._len]
            self._bad[:keep] = self._bad[drop : self._len]
            self._len, self._buf_start = keep, self._buf_start + drop
            if self._any_bad:
                self._any_bad = bool(self._bad[:keep].any())
        if self._len + n > self._cap:
            self._cap = 2 * (self._len + n)
            buf = np.empty((self._cap, self.channels), dtype=np.float32)
            buf[: self._len] = self._buf[: self._len]
            badb = np.zeros(self._cap, dtype=bool)
            badb[: self._len] = self._bad[: self._len]
            self._buf, self._bad = buf, badb

    def _cut(self) -> Windows:
        first = self._next_start - self._buf_start
        avail = self._len - first - self.window
        if avail < 0:
            return Windows(np.empty((0, self.window, self.channels), np.float32), _NO_STARTS, 0)
        k = avail // self.hop + 1
        w, hop = self.window, self.hop
        rs, cs = self._buf.strides
        # (k, window, channels) view onto the buffer, then one contiguous copy for the model
        view: npt.NDArray[np.float32] = np.ndarray(
            (k, w, self.channels), np.float32, self._buf, first * rs, (hop * rs, rs, cs)
        )
        rel = hop * np.arange(k)
        starts = self._buf_start + first + rel
        self._next_start += k * hop
        if not self._any_bad:
            return Windows(view.copy(), starts, 0)
        # bad samples per window from a running count: no (k, window) mask needed
        counts = np.concatenate(([0], np.cumsum(self._bad[first : first + rel[-1] + w])))
        good = (counts[rel + w] - counts[rel]) == 0
        return Windows(view[good].copy(), starts[good], int(k - good.sum()))


_NO_STARTS = np.empty(0, dtype=np.int64)
