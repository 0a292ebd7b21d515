"""A model pool and its schedulers wired as the agent wires them, each scheduler's worker
running in a thread of its own (as the supervisor runs it) until the block ends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from edge_agent.profiles import Profile
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import InferenceScheduler, SchedulerSet
from edge_agent.service.faults import Faults
from edge_agent.service.supervisor import Loop


@contextmanager
def pool_with_workers(profile: Profile) -> Iterator[tuple[ModelPool, SchedulerSet]]:
    """(pool, schedulers): a model the pool loads gets a scheduler whose worker runs; an
    evicted one loses it. On exit the workers are stopped and joined (10 s each)."""
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def supervise(name: str, sched: InferenceScheduler) -> None:  # the agent's on_new
        t = threading.Thread(target=sched.run, args=(Loop(name, stop, Faults({}, {})),))
        t.start()
        workers.append(t)

    pool = ModelPool(profile)
    scheds = SchedulerSet(profile)
    scheds.on_new = supervise
    pool.on_load = lambda e: scheds.add(e.model)
    pool.on_evict = lambda e: scheds.remove(e.model)
    try:
        yield pool, scheds
    finally:
        stop.set()
        for w in workers:
            w.join(10)
        assert not any(w.is_alive() for w in workers), "a scheduler's worker did not stop"
