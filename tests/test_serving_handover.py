"""The endpoint's short way through a model's scheduler (InferenceScheduler.try_now):
scored in the requester's thread only when the worker is idle and nothing is queued,
with the same deadline refusal, counted as the scheduler's work; otherwise the caller
submits as before, and the worker never scores beside it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_agent.errors import OverloadError
from edge_agent.profiles import Profile
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import InferenceScheduler, Priority
from tests.agentutil import MODELS
from tests.serving_inprocess import StopLoop

MODEL = MODELS / "vibration-ae-fp32-onnx"


def _running(sched: InferenceScheduler) -> StopLoop:
    loop = StopLoop()
    threading.Thread(target=sched.run, args=(loop,), daemon=True).start()
    end = time.monotonic() + 30
    while not sched.running:
        assert time.monotonic() < end, "the worker never started"
        time.sleep(0.01)
    return loop


def test_scored_at_once_when_the_worker_is_idle() -> None:
    model = ModelPool(Profile(name="handover")).acquire(MODEL, "test")
    sched = InferenceScheduler(model, max_delay_s=0.0)
    x = model.normalize(model.card.golden.inputs[:3])
    assert sched.try_now(model, x, deadline=None) is None  # no worker: not here
    loop = _running(sched)
    try:
        got = sched.try_now(model, x, deadline=time.monotonic() + 10)
        assert got is not None
        np.testing.assert_allclose(got, model.scores(model.card.golden.inputs[:3]), rtol=1e-6)
        snap = sched.snapshot()
        assert (snap["batches"], snap["windows"], snap["inline_windows"]) == (1, 3, 0)
        # after it, the worker still serves submitted requests
        r = sched.submit(model, x, priority=Priority.BEST_EFFORT)
        assert r.done.wait(30)
        np.testing.assert_allclose(r.scores, got)  # type: ignore[arg-type]
    finally:
        loop.stop.set()


def test_not_taken_past_queued_work_and_refused_past_its_deadline() -> None:
    model = ModelPool(Profile(name="handover")).acquire(MODEL, "test")
    sched = InferenceScheduler(model, max_delay_s=0.0)
    x = model.normalize(model.card.golden.inputs[:1])
    loop = _running(sched)
    loop.stop.set()  # the worker leaves at its next beat; hold it there
    end = time.monotonic() + 30
    while sched.running:
        assert time.monotonic() < end
        time.sleep(0.01)
    sched._workers = 1  # a worker "there" but not taking: requests stay queued
    try:
        queued = sched.submit(model, x, priority=Priority.REALTIME)
        assert sched.try_now(model, x, deadline=None) is None  # behind queued work
        assert not queued.done.is_set()
        sched._q.clear()
        sched._queued_windows = 0
        with pytest.raises(OverloadError, match="deadline"):
            sched.try_now(model, x, deadline=time.monotonic() - 1)
        assert sched.snapshot()["refused"] == 1
    finally:
        sched._workers = 0


def test_the_worker_waits_for_a_request_scored_in_its_callers_thread() -> None:
    model = ModelPool(Profile(name="handover")).acquire(MODEL, "test")
    sched = InferenceScheduler(model, max_delay_s=0.0)
    x = model.normalize(model.card.golden.inputs[:1])
    sched._executing = True  # as while a try_now scores
    assert sched.try_now(model, x, deadline=None) is None  # one at a time
    sched.submit(model, x, priority=Priority.REALTIME)
    assert sched.next_batch(0.05) == []  # held back while the other scores
    with sched._cv:
        sched._executing = False
        sched._cv.notify_all()
    assert len(sched.next_batch(0.05)) == 1
