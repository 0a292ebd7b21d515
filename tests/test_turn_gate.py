"""Streams at max speed take their turns through a gate, a few at a time, in order.

A source that runs ahead of its stream (a file or generator at max speed) gives its
stream a full turn of work each time; 64 such streams each in its own thread cost 1.6x
one stream's CPU per window, taking turns at random. The runner lets at most the
gate's slots hold a turn at once (counted here, not timed), lets waiters in in arrival
order, and never keeps a slot for a stream that stopped, failed or finished. A live
source (a sensor, a paced replay) never waits for the gate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from edge_agent.sources.base import Block, Source
from edge_agent.sources.runner import MERGE_MAX_BYTES, SourceRunner, TurnGate

BLOCK = 1024  # samples of one channel per read: 4 KiB


@dataclass(frozen=True)
class _Options:
    channels: tuple[str, ...] = ("x",)
    rate_hz: float = 100.0
    speed: float = 0.0  # 0: max speed (read in the consumer's thread); else live


class _Endless(Source):
    """Contiguous blocks for as long as it is read (`limit`: then it finishes)."""

    kind = "endless"

    def __init__(self, name: str, speed: float = 0.0, limit: int | None = None) -> None:
        super().__init__(name, _Options(speed=speed))
        self._seq = 0
        self._limit = limit

    def open(self) -> None:
        pass

    def read(self, timeout: float) -> Block | None:
        if self._limit is not None and self._seq >= self._limit:
            self.finished = True
            return None
        if self.live:
            time.sleep(0.002)  # a sensor: data comes on its own clock
        blk = Block(np.zeros((BLOCK, 1), np.float32), self._seq / 100.0, self._seq, 100.0)
        self._seq += BLOCK
        return blk


def _wait_until(cond: object, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_at_most_the_gates_slots_hold_a_turn_at_once() -> None:
    gate = TurnGate(2)
    runners = [SourceRunner(_Endless(f"s{i}"), merge_below=16, gate=gate) for i in range(8)]
    holding = 0
    most = 0
    turns = [0] * len(runners)
    lock = threading.Lock()
    stop = threading.Event()

    def consumer(i: int) -> None:
        nonlocal holding, most
        r = runners[i]
        inside = False
        while not stop.is_set():
            if inside:  # the next get() ends the turn whose blocks we hold
                with lock:
                    holding -= 1
                inside = False
            blocks = r.get(0.25, 1)
            if blocks and r.in_turn:  # a gated turn (its first one is not)
                with lock:
                    holding += 1
                    most = max(most, holding)
                inside = True
                turns[i] += 1
                time.sleep(0.001)  # the turn's work: others would run meanwhile
        with lock:
            holding -= inside  # leaving: our turn ends with end_turn
        r.end_turn()

    for r in runners:
        r.start()
    threads = [threading.Thread(target=consumer, args=(i,)) for i in range(len(runners))]
    for t in threads:
        t.start()
    try:
        _wait_until(lambda: min(turns) >= 5, "every stream gets gated turns")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for r in runners:
            r.stop()
    assert gate.max_inside == 2, "both slots used, never more"
    assert most <= 2, f"{most} streams held a turn at once"
    assert gate.inside == 0, "every turn given back"


def test_full_turns_go_through_the_gate_and_a_live_source_never_waits() -> None:
    gate = TurnGate(1)
    fast = SourceRunner(_Endless("fast"), merge_below=16, gate=gate)
    live = SourceRunner(_Endless("live", speed=1.0), merge_below=16, gate=gate)
    fast.start()
    live.start()
    try:
        got = fast.get(0.25, 1)  # the first turn: not yet known to run ahead
        assert sum(b.samples.nbytes for b in got) >= MERGE_MAX_BYTES
        assert gate.entries == 0
        assert fast.get(0.25, 1)  # it ran ahead: this turn is the gate's one slot
        assert gate.inside == 1
        assert fast.in_turn
        # a live source's blocks come while the slot is held elsewhere
        _wait_until(lambda: bool(live.get(0.25, 1)), "the live source is not held up")
        assert gate.inside == 1
        assert gate.entries == 1
    finally:
        fast.stop()
        live.stop()
    assert gate.inside == 0, "stop() gives the turn back"


def test_a_stream_that_leaves_gives_its_turn_back() -> None:
    gate = TurnGate(1)
    r = SourceRunner(_Endless("s"), merge_below=16, gate=gate)
    r.start()
    try:
        r.get(0.25, 1)
        r.get(0.25, 1)
        assert gate.inside == 1
        r.end_turn()  # what a stream's serve() does on its way out (an error, the end)
        assert gate.inside == 0
        r.end_turn()  # twice is harmless
        assert gate.inside == 0
        assert r.get(0.25, 1)
        assert gate.inside == 1
    finally:
        r.stop()
    assert gate.inside == 0


def test_the_data_ending_gives_the_turn_back() -> None:
    gate = TurnGate(1)
    r = SourceRunner(_Endless("s", limit=600 * BLOCK), merge_below=16, gate=gate)
    r.start()
    try:
        while not r.done:
            r.get(0.25, 1)
        assert gate.entries > 0
        assert gate.inside == 0, "a finished source holds no turn"
    finally:
        r.stop()


def test_waiters_get_their_turns_in_arrival_order_and_a_timeout_leaves_no_trace() -> None:
    gate = TurnGate(1)
    assert gate.acquire(1.0)
    assert not gate.acquire(0.01), "full: refused after the timeout"
    order: list[int] = []

    def waiter(i: int) -> None:
        assert gate.acquire(60.0)
        order.append(i)
        gate.release()

    threads = []
    for i in range(4):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        _wait_until(lambda n=i + 1: len(gate._waiters) == n, "the waiter queues")
    gate.release()
    for t in threads:
        t.join(30)
    assert order == [0, 1, 2, 3]
    assert gate.inside == 0
    assert gate.acquire(0.01), "the slot is free again"
    gate.release()
