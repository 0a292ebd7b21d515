"""Running a second model beside the serving one (OTA shadow and trial).

`ShadowRunner` is installed as a StreamPipeline shadow hook: the stream thread only
copies the batch into a bounded queue (never waits); a worker thread scores it with the
candidate. When the worker falls behind, batches are skipped and counted, so the active
pipeline is never slowed by the candidate. After a promotion the same runner keeps the
previous model beside the new one for the trial.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading

import numpy as np
import numpy.typing as npt

from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.pipeline.windows import Windows
from edge_agent.runtime.model import LoadedModel
from edge_agent.updates.checks import ShadowTally

__all__ = ["SHADOW_QUEUE_BATCHES", "ShadowRunner"]

log = logging.getLogger(__name__)

SHADOW_QUEUE_BATCHES = 16  # batches waiting for the candidate; beyond this they are skipped

_Item = tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], LoadedModel]


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
        self._pipelines: list[StreamPipeline] = []

    # -- stream thread ---------------------------------------------------------------
    def hook(self, w: Windows, scores: npt.NDArray[np.float64], model: LoadedModel) -> None:
        if self._done.is_set():
            return
        try:
            # Windows may be views on the windower's ring buffer: copy before handing over.
            self._q.put_nowait((np.array(w.data, copy=True), scores.copy(), model))
        except queue.Full:
            with self._lock:
                self.tally.skipped += len(scores)

    # -- control (updater thread) ----------------------------------------------------
    def start(self, pipelines: list[StreamPipeline]) -> None:
        self._thread.start()
        self._pipelines = pipelines
        for p in pipelines:
            p.shadow = self.hook

    def wait(self, stop: threading.Event, poll_s: float = 0.05) -> bool:
        """Block until `target` windows were shadowed (True) or `stop` is set (False)."""
        while not self._done.wait(poll_s):
            if stop.is_set():
                return False
        return True

    def close(self) -> None:
        for p in self._pipelines:
            if p.shadow == self.hook:
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
            data, active_scores, active = item
            try:
                cand = self.candidate.scores(active.denormalize(data))
            except Exception as e:  # noqa: BLE001 - a candidate that cannot score fails its shadow
                self.error = f"{type(e).__name__}: {e}"
                log.warning("shadow: candidate failed: %s", self.error)
                self._done.set()
                break
            with self._lock:
                self.tally.add(active_scores, cand)
                if self.tally.windows >= self.target:
                    self._done.set()
