"""The demo source: the deterministic signal of `synth_signal.py`, paced or at full speed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge_agent.schema import check
from edge_agent.sources.base import Block, Source
from edge_agent.sources.pacing import Pacer
from edge_agent.sources.synth_signal import CHANNELS, SignalSpec, SyntheticSignal

__all__ = ["Options", "SyntheticSource"]

_RENDER_AHEAD = 1024  # samples rendered at once (the signal is a function of the index)


@dataclass(frozen=True)
class Options:
    rate_hz: float = field(default=100.0, metadata=check("positive"))
    seed: int = field(default=0, metadata=check("nonneg"))  # the noise generator's key
    block: int = field(default=32, metadata=check("positive"))
    speed: float = field(default=1.0, metadata=check("nonneg"))
    anomalies: bool = True
    first_anomaly_s: float = field(default=30.0, metadata=check("nonneg"))
    anomaly_every_s: float = field(default=60.0, metadata=check("positive"))
    anomaly_duration_s: float = field(default=8.0, metadata=check("positive"))


class SyntheticSource(Source):
    kind = "synthetic"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        o = options
        self.signal = SyntheticSignal(
            SignalSpec(
                rate_hz=o.rate_hz,
                seed=o.seed,
                anomalies=o.anomalies,
                first_anomaly_s=o.first_anomaly_s,
                anomaly_every_s=o.anomaly_every_s,
                anomaly_duration_s=o.anomaly_duration_s,
            )
        )
        self._next = 0
        self._pacer = Pacer(o.speed)
        # rendered ahead in chunks: a block of 16 costs a slice, not 20 numpy calls
        self._ahead = np.empty((0, len(CHANNELS)), np.float32)
        self._ahead_at = 0
        self._t_start = 0.0

    @property
    def channels(self) -> tuple[str, ...]:
        return CHANNELS

    def open(self) -> None:
        self._t_start = time.time()

    def read(self, timeout: float) -> Block | None:
        o = self.options
        # due when its last sample is (as a sensor's reading is there when taken, and as
        # replay paces): one sample period later, every event came that much late
        last_offset = (self._next + o.block - 1) / o.rate_hz
        if not self._pacer.wait(last_offset, timeout):
            return None
        samples = self._render(self._next, o.block)
        blk = Block(samples, self._t_start + self._next / o.rate_hz, self._next, o.rate_hz)
        self._next += o.block
        return blk

    def _render(self, start: int, n: int) -> npt.NDArray[np.float32]:
        end = self._ahead_at + len(self._ahead)
        if not (self._ahead_at <= start and start + n <= end):
            self._ahead_at = start
            self._ahead = self.signal.render(start, max(n, _RENDER_AHEAD))
        i = start - self._ahead_at
        out: npt.NDArray[np.float32] = self._ahead[i : i + n].copy()  # a block owns its samples
        return out


SOURCE_CLASS = SyntheticSource
