"""Running a second model beside the serving one (OTA shadow and trial).

`ShadowRunner` is installed as a StreamPipeline shadow hook: the stream thread only
copies the batch into a bounded queue (never waits); a worker thread scores it with the
candidate. Each stream's batches are counted against that stream's own thresholds (the
serving policy's, read per batch, and the candidate's under that stream's config).
When the worker falls behind, batches are skipped and counted, so the active pipeline is
never slowed by the candidate. After a promotion the same runner keeps the
previous model beside the new one for the trial.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.pipeline.windows import Windows
from edge_agent.runtime.model import LoadedModel
from edge_agent.updates.checks import ShadowTally

__all__ = ["SHADOW_QUEUE_BATCHES", "ShadowRunner"]

log = logging.getLogger(__name__)

SHADOW_QUEUE_BATCHES = 16  # batches waiting for the candidate; beyond this they are skipped

# data, the active scores, the active model, its threshold, the candidate (as this
# stream runs it: its calibration) and the candidate's threshold
_Item = tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float64], LoadedModel, float, LoadedModel, float
]
_Hook = Callable[[Windows, npt.NDArray[np.float64], LoadedModel], None]


class ShadowRunner:
    def __init__(self, candidate: LoadedModel, tally: ShadowTally, target: int) -> None:
        self.candidate = candidate
        self.tally = tally
        self.target = target
        self.error = ""
        self._q: queue.Queue[_Item | None] = queue.Queue(maxsize=SHADOW_QUEUE_BATCHES)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._work, name="ota-shadow", daemon=True)
        self._hooks: list[tuple[StreamPipeline, _Hook]] = []

    # -- stream thread ---------------------------------------------------------------
    def _hook_for(
        self, pipeline: StreamPipeline, candidate: LoadedModel, candidate_threshold: float
    ) -> _Hook:
        def hook(w: Windows, scores: npt.NDArray[np.float64], model: LoadedModel) -> None:
            if self._done.is_set():
                return
            item = (
                # Windows may be views on the windower's ring buffer: copy before handing over.
                np.array(w.data, copy=True),
                scores.copy(),
                model,
                pipeline.threshold,
                candidate,
                candidate_threshold,
            )
            try:
                self._q.put_nowait(item)
            except queue.Full:
                with self._lock:
                    self.tally.skipped += len(scores)

        return hook

    # -- control (updater thread) ----------------------------------------------------
    def start(
        self,
        pipelines: Sequence[StreamPipeline],
        candidate_thresholds: Sequence[float],
        candidates: Sequence[LoadedModel] | None = None,
    ) -> None:
        """Shadow `pipelines`; `candidate_thresholds[i]` judges the candidate on the i-th,
        which runs there as `candidates[i]` (the same model with that stream's
        calibration; default: the runner's candidate as it is)."""
        cands = list(candidates) if candidates is not None else [self.candidate] * len(pipelines)
        if not len(pipelines) == len(candidate_thresholds) == len(cands):
            raise ValueError("one candidate and one candidate threshold per pipeline")
        self._thread.start()
        for p, cand, thr in zip(pipelines, cands, candidate_thresholds, strict=True):
            hook = self._hook_for(p, cand, thr)
            self._hooks.append((p, hook))
            p.shadow = hook

    def wait(
        self, stop: threading.Event, poll_s: float = 0.05, timeout_s: float | None = None
    ) -> bool:
        """Block until `target` windows were shadowed (True), or `stop` is set or
        `timeout_s` passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._done.wait(poll_s):
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return False
        return True

    def close(self) -> None:
        for p, hook in self._hooks:
            if p.shadow is hook:
                p.shadow = None
        self._done.set()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._thread.join(timeout=5.0)

    # -- worker thread ---------------------------------------------------------------
    def _work(self) -> None:
        while not (self._done.is_set() and self._q.empty()):
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                break
            data, active_scores, active, active_thr, candidate, cand_thr = item
            try:
                cand = candidate.scores(active.denormalize(data))
            except Exception as e:  # noqa: BLE001 - a candidate that cannot score fails its shadow
                self.error = f"{type(e).__name__}: {e}"
                log.warning("shadow: candidate failed: %s", self.error)
                self._done.set()
                break
            with self._lock:
                self.tally.add(active_scores, cand, active_thr, cand_thr)
                if self.tally.windows >= self.target:
                    self._done.set()
