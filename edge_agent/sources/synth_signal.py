"""Deterministic vibration-like demo signal with anomalies injected at known times.

Pure: `render(start, n)` returns the same samples for the same (seed, range) however
the range is split into blocks, so a test can re-derive exactly what the agent saw.
Channels: vib_x, vib_y, vib_z (g), current (A). The model in `models/` is trained on
the normal part of this signal.

Cheap per sample, so that an agent fed at full speed spends its CPU on itself and the
model: the normal signal repeats every `period` samples (6,900 at 100 Hz: the shaft's
100, the load's 2,300, the mains' 6), so it is computed once per rate and looked up; the
noise of sample k is a 64-bit word of a counter-based generator (Philox keyed by the
seed, counter k // 4) whose four 16-bit quarters index a table of normal quantiles, one
per channel (inverse transform sampling: a standard normal cut at +-4.3).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = ["ANOMALY_KINDS", "CHANNELS", "Anomaly", "SignalSpec", "SyntheticSignal"]

CHANNELS = ("vib_x", "vib_y", "vib_z", "current")
ANOMALY_KINDS = ("bearing", "imbalance", "current_surge", "looseness")
_MAX_PERIOD = 1 << 16  # longer periods (odd rates) are computed per render instead
_QUANTILE_BITS = 16

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SignalSpec:
    rate_hz: float = 100.0
    seed: int = 0
    shaft_hz: float = 7.0
    noise: float = 0.05
    first_anomaly_s: float = 30.0
    anomaly_every_s: float = 60.0
    anomaly_duration_s: float = 8.0
    anomalies: bool = True


@dataclass(frozen=True)
class Anomaly:
    start_s: float
    end_s: float
    kind: str


def _normal_part(rate_hz: float, shaft_hz: float, start: int, n: int) -> F64:
    """The signal without anomalies or noise, samples [start, start+n), (n, 4) float64.
    The harmonics come from one sin/cos pair by angle addition."""
    t = (start + np.arange(n)) / rate_hz
    w = 2 * np.pi * shaft_hz * t
    s1, c1 = np.sin(w), np.cos(w)
    s2, c2 = 2 * s1 * c1, (c1 - s1) * (c1 + s1)
    s3, c3 = s2 * c1 + c2 * s1, c2 * c1 - s2 * s1
    s5 = 2 * s2 * c2 * c1 + (c2 - s2) * (c2 + s2) * s1  # sin(4w + w)
    # slow load variation makes "normal" less trivial than a pure tone
    load = 1.0 + 0.15 * np.sin(2 * np.pi * t / 23.0)
    out = np.empty((n, len(CHANNELS)))
    # sin(hw + p) = sin(hw) cos(p) + cos(hw) sin(p)
    out[:, 0] = load * (
        0.8 * s1
        + 0.25 * (s2 * np.cos(0.3) + c2 * np.sin(0.3))
        + 0.1 * (s3 * np.cos(1.1) + c3 * np.sin(1.1))
    )
    out[:, 1] = load * (0.8 * c1 + 0.2 * (s2 * np.cos(1.7) + c2 * np.sin(1.7)) + 0.08 * c3)
    out[:, 2] = 0.3 * (s2 * np.cos(0.5) + c2 * np.sin(0.5)) + 0.05 * s5
    out[:, 3] = 4.0 * load + 0.2 * np.sin(2 * np.pi * 50.0 / rate_hz * (start + np.arange(n)) / 3)
    return out


@lru_cache(maxsize=8)
def _period_table(rate_hz: float, shaft_hz: float) -> F64 | None:
    """One period of `normal_part` (read-only), or None when it is longer than
    _MAX_PERIOD samples: the shaft's, the load's (23 s) and the mains' (50/3 Hz)
    cycles per sample times the period are all whole numbers."""
    p = np.arange(1, _MAX_PERIOD + 1, dtype=np.float64)
    whole = np.ones(_MAX_PERIOD, dtype=bool)
    for cycles in (shaft_hz / rate_hz, 1.0 / (23.0 * rate_hz), 50.0 / (3.0 * rate_hz)):
        x = p * cycles
        whole &= np.abs(x - np.rint(x)) <= 1e-9
    if not whole.any():
        return None
    table = _normal_part(rate_hz, shaft_hz, 0, int(np.argmax(whole)) + 1)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=8)
def _noise_table(scale: float) -> npt.NDArray[np.float32]:
    """`scale` x the standard normal's quantiles at (i + 1/2) / 2^16, i < 2^16 (rescaled
    to unit variance): a uniform 16-bit index into it is a normal draw. The normal CDF by
    the trapezoid rule on a fine grid, inverted by interpolation (numpy has no erfinv)."""
    x = np.linspace(0.0, 9.0, 90_001)
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    cdf = np.concatenate(([0.0], np.cumsum((pdf[1:] + pdf[:-1]) * (0.5 * (x[1] - x[0])))))
    half = 1 << (_QUANTILE_BITS - 1)
    q = np.interp((np.arange(half) + 0.5) / (2 * half), cdf, x)  # Phi(q) - 1/2
    tab = np.concatenate((-q[::-1], q))
    tab *= scale / np.sqrt(np.mean(tab * tab))
    out = tab.astype(np.float32)
    out.setflags(write=False)
    return out


class SyntheticSignal:
    def __init__(self, spec: SignalSpec | None = None) -> None:
        self.spec = spec or SignalSpec()
        s = self.spec
        self._table = _period_table(float(s.rate_hz), float(s.shaft_hz))
        # the noise of sample k: word k % 4 of Philox(key=seed)'s block after counter k // 4
        self._bits = np.random.Philox(key=s.seed)
        self._state = self._bits.state
        self._counter = self._state["state"]["counter"]
        self._bits_lock = threading.Lock()  # state set + draw, as one

    def anomaly_at_index(self, k: int) -> Anomaly:
        s = self.spec
        start = s.first_anomaly_s + k * s.anomaly_every_s
        return Anomaly(start, start + s.anomaly_duration_s, ANOMALY_KINDS[k % len(ANOMALY_KINDS)])

    def anomalies_between(self, t0: float, t1: float) -> list[Anomaly]:
        """Injected anomalies overlapping [t0, t1) seconds of signal time."""
        s = self.spec
        if not s.anomalies or t1 <= s.first_anomaly_s:
            return []
        k0 = max(0, int((t0 - s.first_anomaly_s - s.anomaly_duration_s) // s.anomaly_every_s))
        out: list[Anomaly] = []
        k = k0
        while True:
            a = self.anomaly_at_index(k)
            if a.start_s >= t1:
                return out
            if a.end_s > t0:
                out.append(a)
            k += 1

    def labels(self, start: int, n: int) -> npt.NDArray[np.bool_]:
        """True for samples inside an injected anomaly."""
        t = (start + np.arange(n)) / self.spec.rate_hz
        lab = np.zeros(n, dtype=bool)
        for a in self.anomalies_between(start / self.spec.rate_hz, (start + n) / self.spec.rate_hz):
            lab |= (t >= a.start_s) & (t < a.end_s)
        return lab

    def _rows(self, start: int, n: int) -> Iterator[tuple[slice, F64]]:
        """The normal signal of samples [start, start+n) in pieces: (where in the range,
        its float64 rows), from the period table when there is one."""
        if self._table is None:
            yield slice(0, n), _normal_part(self.spec.rate_hz, self.spec.shaft_hz, start, n)
            return
        period = len(self._table)
        a, p = 0, start % period
        while a < n:
            m = min(n - a, period - p)
            yield slice(a, a + m), self._table[p : p + m]
            a, p = a + m, 0

    def _noise(self, start: int, n: int) -> npt.NDArray[np.float32]:
        """(n, 4) noise of samples [start, start+n): spec.noise, 2 x that on current."""
        j = start % 4
        with self._bits_lock:
            self._counter[0] = start // 4
            self._bits.state = self._state
            words = self._bits.random_raw(j + n)
        idx = words.view(np.uint16)[4 * j :].reshape(n, len(CHANNELS))
        noise: npt.NDArray[np.float32] = np.take(_noise_table(float(self.spec.noise)), idx)
        noise[:, 3] *= 2
        return noise

    def render(self, start: int, n: int) -> npt.NDArray[np.float32]:
        """Samples [start, start+n) as float32 array of shape (n, 4)."""
        s = self.spec
        out = np.empty((n, len(CHANNELS)), np.float32)
        if n <= 0:
            return out
        noise = self._noise(start, n) if s.noise else np.zeros_like(out)
        for sl, rows in self._rows(start, n):  # float64 + noise, rounded to float32 once
            np.add(rows, noise[sl], out=out[sl])
        # up to the next sample's time, not the last's + 1e-9 s: past 2**24 s (hours at
        # full speed) that is under an ulp, and an anomaly starting on the last sample
        # was missed (a candidate too many is harmless: its span is empty)
        end = (start + n) / s.rate_hz
        hits = self.anomalies_between(start / s.rate_hz, end) if s.anomalies else []
        if hits:
            self._anomalies(start, hits, noise, out)
        return out

    def _anomalies(
        self,
        start: int,
        hits: list[Anomaly],
        noise: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32],
    ) -> None:
        """Rewrites the samples of `out` inside the anomalies `hits`: each anomaly applied
        in turn to the normal signal there (float64), then the noise added."""
        s = self.spec
        t = (start + np.arange(len(out))) / s.rate_hz
        # t >= start_s and t < end_s: a slice, t rising
        spans = [
            (int(np.searchsorted(t, a.start_s)), int(np.searchsorted(t, a.end_s)), a) for a in hits
        ]
        spans = [(lo, hi, a) for lo, hi, a in spans if hi > lo]
        if not spans:
            return
        i0, i1 = min(lo for lo, _, _ in spans), max(hi for _, hi, _ in spans)
        det = np.empty((i1 - i0, len(CHANNELS)))
        for sl, rows in self._rows(start + i0, i1 - i0):
            det[sl] = rows
        for lo, hi, a in spans:
            m = slice(lo - i0, hi - i0)
            tm = t[lo:hi]
            if a.kind == "bearing":
                burst = 0.5 * np.sin(2 * np.pi * 31.0 * tm) * (1 + np.sin(2 * np.pi * 3.1 * tm))
                det[m, 0] += burst
                det[m, 1] += 0.7 * burst
                det[m, 2] += 0.4 * burst
            elif a.kind == "imbalance":
                det[m, 0] *= 1.9
                det[m, 1] *= 1.9
            elif a.kind == "current_surge":
                det[m, 3] *= 1.5
                det[m, 3] += 0.6 * np.sin(2 * np.pi * 11.0 * tm)
            else:  # looseness: sub-harmonic and clipping
                det[m, 2] += 0.5 * np.sin(np.pi * s.shaft_hz * tm)
                det[m, 0] = np.clip(det[m, 0], -0.55, 0.55)
        np.add(det, noise[i0:i1], out=out[i0:i1])
