"""Deterministic vibration-like demo signal with anomalies injected at known times.

Pure: `render(start, n)` returns the same samples for the same (seed, range) however
the range is split into blocks, so a test can re-derive exactly what the agent saw.
Channels: vib_x, vib_y, vib_z (g), current (A). The model in `models/` is trained on
the normal part of this signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["ANOMALY_KINDS", "CHANNELS", "Anomaly", "SignalSpec", "SyntheticSignal"]

CHANNELS = ("vib_x", "vib_y", "vib_z", "current")
ANOMALY_KINDS = ("bearing", "imbalance", "current_surge", "looseness")
_CHUNK = 1024  # samples per RNG chunk; noise is keyed by (seed, chunk) for determinism


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


class SyntheticSignal:
    def __init__(self, spec: SignalSpec | None = None) -> None:
        self.spec = spec or SignalSpec()
        # the chunks last drawn: seeding a generator costs ~100 us, a block of 16 needs
        # the same chunk 64 times in a row
        self._chunks: dict[int, npt.NDArray[np.float64]] = {}

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

    def _noise(self, start: int, n: int) -> npt.NDArray[np.float64]:
        c0, c1 = start // _CHUNK, (start + n - 1) // _CHUNK
        parts = [self._chunk(c) for c in range(c0, c1 + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        off = start - c0 * _CHUNK
        return block[off : off + n]

    def _chunk(self, c: int) -> npt.NDArray[np.float64]:
        x = self._chunks.get(c)
        if x is None:
            if len(self._chunks) >= 4:
                self._chunks.clear()
            x = np.random.default_rng([self.spec.seed, c]).standard_normal((_CHUNK, len(CHANNELS)))
            self._chunks[c] = x
        return x

    def labels(self, start: int, n: int) -> npt.NDArray[np.bool_]:
        """True for samples inside an injected anomaly."""
        t = (start + np.arange(n)) / self.spec.rate_hz
        lab = np.zeros(n, dtype=bool)
        for a in self.anomalies_between(float(t[0]), float(t[-1]) + 1e-9):
            lab |= (t >= a.start_s) & (t < a.end_s)
        return lab

    def render(self, start: int, n: int) -> npt.NDArray[np.float32]:
        """Samples [start, start+n) as float32 array of shape (n, 4)."""
        s = self.spec
        t = (start + np.arange(n)) / s.rate_hz
        w = 2 * np.pi * s.shaft_hz * t
        # slow load variation makes "normal" less trivial than a pure tone
        load = 1.0 + 0.15 * np.sin(2 * np.pi * t / 23.0)
        x = load * (0.8 * np.sin(w) + 0.25 * np.sin(2 * w + 0.3) + 0.1 * np.sin(3 * w + 1.1))
        y = load * (0.8 * np.cos(w) + 0.2 * np.sin(2 * w + 1.7) + 0.08 * np.cos(3 * w))
        z = 0.3 * np.sin(2 * w + 0.5) + 0.05 * np.sin(5 * w)
        cur = 4.0 * load + 0.2 * np.sin(2 * np.pi * 50.0 / s.rate_hz * (start + np.arange(n)) / 3)
        out = np.stack([x, y, z, cur], axis=1)
        for a in self.anomalies_between(float(t[0]), float(t[-1]) + 1e-9):
            m = (t >= a.start_s) & (t < a.end_s)
            tm = t[m]
            if a.kind == "bearing":
                burst = 0.5 * np.sin(2 * np.pi * 31.0 * tm) * (1 + np.sin(2 * np.pi * 3.1 * tm))
                out[m, 0] += burst
                out[m, 1] += 0.7 * burst
                out[m, 2] += 0.4 * burst
            elif a.kind == "imbalance":
                out[m, 0] *= 1.9
                out[m, 1] *= 1.9
            elif a.kind == "current_surge":
                out[m, 3] *= 1.5
                out[m, 3] += 0.6 * np.sin(2 * np.pi * 11.0 * tm)
            else:  # looseness: sub-harmonic and clipping
                out[m, 2] += 0.5 * np.sin(np.pi * s.shaft_hz * tm)
                out[m, 0] = np.clip(out[m, 0], -0.55, 0.55)
        noise_scale = np.array([s.noise, s.noise, s.noise, 2 * s.noise])
        out += self._noise(start, n) * noise_scale
        return out.astype(np.float32)
