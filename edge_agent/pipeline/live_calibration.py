"""A calibration an operator asked for on a running stream (remote `calibrate`).

Unlike the automatic one (calibration.Calibrator on a stream's first windows, which are
not scored), the stream keeps scoring with what serves it now while this collects: each
block's samples are copied aside as well. Started and stopped from the command thread,
fed from the stream's thread: every transition is made under one lock. Nothing here
does I/O or runs a model: fitting, storing and swapping are the caller's
(service/remote_calibration.py).

    collecting -> fitting -> applying -> applied | failed | discarded
    collecting | fitting -> stopped  (an operator's stop; the old calibration stays)
    collecting -> failed  (the stream stopped for good meanwhile)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import CalibrationError
from edge_agent.pipeline.calibration import Calibrator

__all__ = ["LiveCalibration", "LiveRequest", "LiveState"]


class LiveState(str, Enum):
    COLLECTING = "collecting"
    FITTING = "fitting"  # fitted on the stream's thread, then waiting to be applied
    APPLYING = "applying"  # too late to stop
    APPLIED = "applied"
    STOPPED = "stopped"
    FAILED = "failed"
    DISCARDED = "discarded"  # fitted, but what serves changed meanwhile (an OTA update)


ACTIVE = frozenset({LiveState.COLLECTING, LiveState.FITTING, LiveState.APPLYING})

# Called once on the stream's thread with the collected samples (n, columns).
OnFull = Callable[[npt.NDArray[np.float32]], None]


@dataclass(frozen=True)
class LiveRequest:
    windows: int
    window: int
    hop: int
    columns: int
    model: str  # "name vN" of the model the collection started on
    model_sha256: str  # the fit is applied only if this model still serves then
    started: float
    alarms_before: int  # the stream's alarm count at the start (alarms during collection)


class LiveCalibration:
    """One stream's remote calibration: the one in progress, else the last one's result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: LiveState | None = None
        self._req: LiveRequest | None = None
        self._cal: Calibrator | None = None
        self._on_full: OnFull | None = None
        self._collected = 0
        self._needed = 0
        self._finished: float | None = None
        self._result: dict[str, Any] = {}
        self.collecting = False  # read without the lock by feed's fast path

    @property
    def state(self) -> LiveState | None:
        return self._state

    @property
    def request(self) -> LiveRequest | None:
        return self._req

    def start(self, req: LiveRequest, on_full: OnFull) -> None:
        """Begin collecting (command thread); CalibrationError if one is in progress."""
        with self._lock:
            if self._state in ACTIVE:
                raise CalibrationError(f"already calibrating ({self._progress()})")
            self._cal = Calibrator(req.window, req.hop, req.windows, req.columns)
            self._req, self._on_full = req, on_full
            self._state, self._collected, self._needed = LiveState.COLLECTING, 0, self._cal.needed
            self._finished, self._result = None, {}
            self.collecting = True

    def feed(self, samples: npt.NDArray[np.float32]) -> None:
        """The stream's thread, for each block it scores. When enough samples are in,
        calls on_full with them (on this thread, outside the lock)."""
        if not self.collecting:
            return
        with self._lock:
            cal = self._cal
            if self._state is not LiveState.COLLECTING or cal is None:
                return
            cal.add(samples)
            self._collected = cal.collected
            if not cal.done:
                return
            data, on_full = cal.samples(), self._on_full
            self._cal, self._on_full, self.collecting = None, None, False
            self._state = LiveState.FITTING
        if on_full is not None:
            on_full(data)

    def stop(self, now: float) -> None:
        """An operator's stop (command thread): while collecting or before the fit is
        applied. CalibrationError when there is nothing to stop, or it is too late."""
        with self._lock:
            if self._state is LiveState.APPLYING:
                raise CalibrationError("too late to stop: the new calibration is being applied")
            if self._state not in ACTIVE:
                raise CalibrationError("no calibration in progress")
            self._end(LiveState.STOPPED, now, {"reason": "stopped by an operator"})

    def abandon(self, now: float, reason: str) -> None:
        """The stream stopped for good: a collection in progress cannot finish."""
        with self._lock:
            if self._state is LiveState.COLLECTING:
                self._end(LiveState.FAILED, now, {"error": reason})

    def begin_apply(self) -> bool:
        """Where the fit is applied: False if it was stopped meanwhile (then nothing
        may change); after True, stop is refused."""
        with self._lock:
            if self._state is not LiveState.FITTING:
                return False
            self._state = LiveState.APPLYING
            return True

    def finish(self, state: LiveState, now: float, **result: Any) -> None:
        """The outcome of a fit (FAILED from FITTING) or of an apply (from APPLYING)."""
        if state in ACTIVE:
            raise ValueError(f"{state.value} is not an outcome")
        with self._lock:
            if self._state in (LiveState.FITTING, LiveState.APPLYING):
                self._end(state, now, result)

    def _end(self, state: LiveState, now: float, result: dict[str, Any]) -> None:
        self._state, self._finished, self._result = state, now, dict(result)
        self._cal, self._on_full, self.collecting = None, None, False  # frees the buffer

    def _progress(self) -> str:
        if self._state is LiveState.COLLECTING:
            return f"collecting: {self._collected}/{self._needed} samples"
        return self._state.value if self._state else "idle"

    def snapshot(self) -> dict[str, Any]:
        """For status and the command's replies; {} when nothing was ever asked."""
        with self._lock:
            req = self._req
            if self._state is None or req is None:
                return {}
            return {
                "state": self._state.value,
                "windows": req.windows,
                "collected": self._collected,
                "needed": self._needed,
                "model": req.model,
                "started": req.started,
                "finished": self._finished,
                **self._result,
            }
