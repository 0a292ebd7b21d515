"""The remote `calibrate` command: on-site calibration of a running stream (docs/fleet.md).

`action=start` hands a collection to the stream (pipeline/live_calibration.py) and
answers at once; the stream keeps scoring with its current calibration and threshold
(alarms keep firing) while it copies its next N windows' samples aside. When they are
in, the stream's thread fits (the same fit as automatic calibration) and hands the
result over to be applied where the agent changes what serves a stream: the updater's
thread between updates (`Updater.call_between_updates`), or, without an updater, the
agent's tick. There promotions, rollbacks and this apply take turns, so a calibration
is never applied to a model that was swapped meanwhile: it is discarded when the model
serving the stream is no longer the one it was collected on, or when an update is being
validated, shadowed or tried (its candidate was set up with the old calibration). An
apply stores `<state_dir>/calibration/<stream>.json` first (atomic), then swaps the
stream's normalisation and threshold in between two blocks.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import CalibrationError, EdgeAgentError
from edge_agent.pipeline.calibration import (
    MIN_WINDOWS,
    Calibration,
    apply_calibration,
    fit_calibration,
    samples_needed,
    save_calibration,
    threshold_warning,
)
from edge_agent.pipeline.live_calibration import LiveRequest, LiveState
from edge_agent.service.remote_commands import CommandError, check_params, int_param
from edge_agent.sources.runner import SourceState
from edge_agent.streams import build_policy

if TYPE_CHECKING:
    from edge_agent.streams import StreamRuntime
    from edge_agent.updates.ota_runtime import OtaRuntime
    from edge_agent.updates.store import SlotStore

__all__ = [
    "DEFAULT_WINDOWS",
    "MAX_BUFFER_BYTES",
    "MAX_WINDOWS",
    "CalibrationControl",
    "slots_busy",
    "update_in_progress",
]

log = logging.getLogger(__name__)

DEFAULT_WINDOWS = 600  # as `edge-agent calibrate` without --windows
MAX_WINDOWS = 20_000
MAX_BUFFER_BYTES = 64 * 1024 * 1024  # the samples held while collecting (float32)
PENDING = 4  # fitted calibrations waiting for the tick (no updater)
ACTIONS = ("start", "stop", "status")

Job = Callable[[], None]


def _no_update() -> str:
    return ""


def slots_busy(store: SlotStore) -> str:
    """Why the slots' phase conflicts with applying a calibration, or "": from validation
    to commit or rollback an update's candidate is set up with the stream's calibration
    of that moment (updates/calib_carry.py), and a promotion would swap it in."""
    from edge_agent.updates.slots import AT_REST

    phase = store.state.phase
    if phase in AT_REST:
        return ""
    return f"an OTA update is in progress ({phase.value}): calibrate after it commits or rolls back"


def update_in_progress(ota: OtaRuntime) -> Callable[[], str]:
    """slots_busy on the agent's slot store; never busy without OTA slots."""

    def busy() -> str:
        return slots_busy(ota.boot.store) if ota.boot is not None else ""

    return busy


class CalibrationControl:
    """The `calibrate` handler over the agent's streams (wired in commands/run.py).

    `update_busy`: why an OTA update conflicts now, or "". `hand_over`: runs a job where
    models are swapped (the updater's `call_between_updates`); None: the job waits for
    `tick` (the agent's tick, where a manual rollback without an updater swaps)."""

    def __init__(
        self,
        streams: Sequence[StreamRuntime],
        state_dir: Path,
        *,
        update_busy: Callable[[], str] = _no_update,
        hand_over: Callable[[Job], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._streams = list(streams)
        self._state_dir = Path(state_dir)
        self._update_busy = update_busy
        self._hand_over = hand_over
        self._clock = clock
        self._pending: queue.Queue[Job] = queue.Queue(PENDING)

    @classmethod
    def for_agent(
        cls, streams: Sequence[StreamRuntime], state_dir: Path, ota: OtaRuntime
    ) -> CalibrationControl:
        up = ota.updater
        return cls(
            streams,
            state_dir,
            update_busy=update_in_progress(ota),
            hand_over=up.call_between_updates if up is not None else None,
        )

    # -- the command (MQTT thread) ----------------------------------------------------

    def handle(self, params: dict[str, Any]) -> dict[str, Any]:
        """`{"action": "start"|"stop"|"status", "stream": NAME, "windows": N}`."""
        check_params(params, {"action": str, "stream": str, "windows": int})
        action = params.get("action")
        if action not in ACTIONS:
            raise CommandError(f"parameter 'action': one of {list(ACTIONS)}, got {action!r}")
        if "windows" in params and action != "start":
            raise CommandError("parameter 'windows': only with action=start")
        s = self._stream(params.get("stream"))
        if action == "start":
            return self._start(s, params)
        if action == "stop":
            try:
                s.live.stop(self._clock())
            except CalibrationError as e:
                raise CommandError(f"stream {s.name!r}: {e}") from e
            log.warning("stream %s: remote calibration stopped by an operator", s.name)
        return self._status(s)

    def _stream(self, name: Any) -> StreamRuntime:
        names = [s.name for s in self._streams]
        if name is None:
            if len(self._streams) != 1:
                raise CommandError(f"parameter 'stream': required, one of {names}")
            return self._streams[0]
        for s in self._streams:
            if s.name == name:
                return s
        raise CommandError(f"parameter 'stream': no stream {name!r} on this device (have {names})")

    def _start(self, s: StreamRuntime, params: Mapping[str, Any]) -> dict[str, Any]:
        p = s.pipeline
        default = s.config.calibrate_windows or DEFAULT_WINDOWS
        windows = int_param(params, "windows", min(max(default, MIN_WINDOWS), MAX_WINDOWS),
                            MIN_WINDOWS, MAX_WINDOWS)  # fmt: skip
        model = p.model
        columns = model.card.preprocessing.columns
        need = samples_needed(p.window, p.hop, windows)
        if need * columns * 4 > MAX_BUFFER_BYTES:
            raise CommandError(
                f"parameter 'windows': {windows} windows hold {need} samples of {columns} "
                f"values, over {MAX_BUFFER_BYTES >> 20} MiB; ask for fewer"
            )
        why = self._not_scoring(s) or self._update_busy()
        if why:
            raise CommandError(f"stream {s.name!r}: {why}; nothing changed")
        req = LiveRequest(
            windows=windows,
            window=p.window,
            hop=p.hop,
            columns=columns,
            model=f"{model.card.name} v{model.card.version}",
            model_sha256=model.card.sha256,
            started=self._clock(),
            alarms_before=p.stats.alarms,
        )
        try:
            s.live.start(req, lambda data: self._collected(s, req, data))
        except CalibrationError as e:
            raise CommandError(f"stream {s.name!r}: {e}; nothing changed") from e
        log.warning(
            "stream %s: remote calibration started on %d windows (%d samples); scoring "
            "continues with the current calibration",
            s.name,
            windows,
            need,
        )
        return {"started": True, **self._status(s)}

    def _status(self, s: StreamRuntime) -> dict[str, Any]:
        return {
            "stream": s.name,
            "live": s.live.snapshot(),
            "calibration": s.calibration_snapshot(),
            "threshold_in_use": s.pipeline.threshold,
        }

    @staticmethod
    def _not_scoring(s: StreamRuntime) -> str:
        if s.error:
            return f"not scoring ({s.error})"
        if s.calibrator is not None:
            c = s.calibrator
            return f"already calibrating (automatic: {c.collected}/{c.needed} samples)"
        state = s.runner.state
        if state is not SourceState.RUNNING:
            return f"not scoring: its source is {state.value}"
        return ""

    # -- the stream's thread --------------------------------------------------------------

    def _collected(self, s: StreamRuntime, req: LiveRequest, data: npt.NDArray[np.float32]) -> None:
        now = self._clock()
        try:
            cal = fit_calibration(
                s.pipeline.model, data, stream=s.name, now=now, window=req.window, hop=req.hop
            )
        except EdgeAgentError as e:  # the data was not usable: nothing changes
            log.error("stream %s: remote calibration failed: %s", s.name, e)
            s.live.finish(LiveState.FAILED, now, error=str(e))
            return
        if not self._submit(lambda: self._apply(s, req, cal)):
            s.live.finish(LiveState.FAILED, now, error="the agent is busy: ask again")

    def _submit(self, job: Job) -> bool:
        if self._hand_over is not None:
            return self._hand_over(job)
        try:
            self._pending.put_nowait(job)
        except queue.Full:
            return False
        return True

    # -- where what serves a stream changes (updater thread, or the agent's tick) ----------

    def tick(self, _snapshot: object = None) -> None:
        """Apply what waits (the agent's tick, as a status listener, when no updater)."""
        while True:
            try:
                job = self._pending.get_nowait()
            except queue.Empty:
                return
            job()

    def _apply(self, s: StreamRuntime, req: LiveRequest, cal: Calibration) -> None:
        if not s.live.begin_apply():
            return  # stopped meanwhile: nothing changes
        now = self._clock()
        try:
            self._apply_checked(s, req, cal, now)
        except Exception as e:  # the updater's or the tick's thread must not die of it
            log.exception("stream %s: remote calibration not applied", s.name)
            s.live.finish(LiveState.FAILED, now, error=f"not applied: {e}")

    def _apply_checked(
        self, s: StreamRuntime, req: LiveRequest, cal: Calibration, now: float
    ) -> None:
        busy = self._update_busy()
        model = s.pipeline.model
        card = model.card
        if not busy and card.sha256 != req.model_sha256:
            busy = (
                f"the stream's model changed meanwhile ({req.model} -> {card.name} v{card.version})"
            )
        if busy:
            log.warning("stream %s: remote calibration discarded: %s", s.name, busy)
            s.live.finish(LiveState.DISCARDED, now, reason=f"{busy}; nothing changed")
            return
        try:
            save_calibration(self._state_dir, cal)
        except CalibrationError as e:
            s.live.finish(LiveState.FAILED, now, error=str(e))
            return
        old = s.calibration
        before = s.pipeline.threshold
        s.pipeline.swap_model(apply_calibration(model, cal), build_policy(s.config, model, cal))
        s.calibration, s.calibration_note, s.calibration_error = cal, "", ""
        warning = threshold_warning(cal, card)
        alarms = s.pipeline.stats.alarms - req.alarms_before
        log.warning(
            "stream %s: remote calibration applied: %d windows, threshold %.4g (was %s)",
            s.name,
            cal.n_windows,
            cal.threshold,
            f"{old.threshold:.4g} (calibrated)" if old is not None else f"{before:.4g}",
        )
        if warning:
            log.warning("stream %s: remote calibration: %s", s.name, warning)
        s.live.finish(
            LiveState.APPLIED,
            now,
            threshold=cal.threshold,
            n_windows=cal.n_windows,
            threshold_in_use=s.pipeline.threshold,  # a config threshold still wins
            previous_threshold=before,
            alarms_during=alarms,
            warning=warning,
        )
