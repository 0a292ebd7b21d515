"""A stream's request: the worker runs only the backend, the stream does the rest.

With many streams at max speed the one worker thread per model was the bottleneck
(model input, backend call and scores, 1.4 us a window of its own). A requester that
prepares its model input hands the worker only the backend call and takes the outputs
back to score them itself, in parts of max_batch windows as the worker made them, so
its scores are exactly those of scoring alone. An endpoint's request (not prepared)
still gets its scores from the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import InferenceScheduler, Priority
from edge_agent.service.faults import Faults
from edge_agent.service.supervisor import Loop
from tests.test_scheduler import MODEL, PROFILE, _signal

MAX_BATCH = 32


@pytest.fixture
def sched() -> Iterator[InferenceScheduler]:
    model = ModelPool(PROFILE).acquire(MODEL, "test")
    s = InferenceScheduler(model, max_batch=MAX_BATCH, max_delay_s=0.05)
    stop = threading.Event()
    t = threading.Thread(target=s.run, args=(Loop("scheduler", stop, Faults({}, {})),))
    t.start()
    yield s
    stop.set()
    t.join(10)
    assert not t.is_alive()


def _windows(seed: int, n: int) -> np.ndarray:
    return _signal(seed)[: 64 * n].reshape(n, 64, -1)


@pytest.mark.parametrize("n", [5, 3 * MAX_BATCH + 7])  # one backend call; several
def test_a_prepared_request_gets_the_backends_outputs_not_scores(
    sched: InferenceScheduler, n: int
) -> None:
    model = sched.model
    x = model.normalize(_windows(1, n))
    prepared = model.model_input(x)
    r = sched.submit(model, x, prepared=prepared)
    assert r.done.wait(60)
    assert r.error is None
    assert r.scores is None, "the requester scores, not the worker"
    assert r.outputs is not None
    assert [len(y) for y in r.outputs] == [
        len(x[i : i + MAX_BATCH]) for i in range(0, n, MAX_BATCH)
    ], "backend calls of at most max_batch windows"
    xin = prepared[0]
    for i, y in zip(range(0, n, MAX_BATCH), r.outputs, strict=True):
        assert np.array_equal(y, model.backend.infer(xin[i : i + MAX_BATCH]))


def test_an_endpoint_request_still_gets_scores_from_the_worker(
    sched: InferenceScheduler,
) -> None:
    model = sched.model
    x = model.normalize(_windows(2, 4))
    r = sched.submit(model, x, priority=Priority.BEST_EFFORT)
    assert r.done.wait(60)
    assert r.outputs is None
    assert r.scores is not None
    assert np.array_equal(r.scores, model.scores_normalized(x))


def test_streams_through_the_worker_get_exactly_their_scores_alone(
    sched: InferenceScheduler,
) -> None:
    model = sched.model
    sizes = {"small": 3, "large": 3 * MAX_BATCH + 7}  # batched together; alone, in parts
    xs = {k: model.normalize(_windows(i + 3, n)) for i, (k, n) in enumerate(sizes.items())}
    # a window beyond the model's range: its score is the saturated one, via the far mask
    xs["small"][1, 5, 0] = 1e3
    got: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def stream(k: str) -> None:
        try:
            for _ in range(3):
                got[k] = sched.score(model, xs[k])
        except BaseException as e:  # noqa: BLE001 - re-raised by the test thread
            errors.append(e)

    for _ in sizes:
        sched.attach()  # two clients: through the worker, not inline
    threads = [threading.Thread(target=stream, args=(k,)) for k in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for k, x in xs.items():
        assert np.array_equal(got[k], model.scores_normalized(x)), k
    snap = sched.snapshot()
    assert snap["inline_windows"] == 0, "the worker ran them"
    assert snap["windows"] == 3 * sum(sizes.values())
