"""Many stepped components share a few worker threads (service/turns.py).

Counted, not timed: how many turns ran at once, in what order, on how many threads;
waits are generous bounds for a loaded machine, never the thing asserted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from edge_agent.service import turns
from edge_agent.service.turns import YIELD, TurnHandle, TurnPool
from tests.waits import until


def _closed(pool: TurnPool) -> None:
    pool.close()
    assert pool.join(time.monotonic() + 10), "a worker did not end after close()"


def test_sixty_four_components_run_on_the_pools_threads_at_most_that_many_at_once() -> None:
    pool = TurnPool(2)
    lock = threading.Lock()
    inside = [0]
    most = [0]
    turns = dict.fromkeys(range(64), 0)

    def turn_of(i: int) -> Callable[[], float | None]:
        def turn() -> float | None:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.0005)  # some work outside the lock
            with lock:
                inside[0] -= 1
                turns[i] += 1
                return None if turns[i] == 20 else YIELD

        return turn

    before = threading.active_count()
    handles = [pool.add(f"c{i}", turn_of(i)) for i in range(64)]
    pool.start()
    until(lambda: all(h.done for h in handles), "every component ran its 20 turns")
    assert threading.active_count() - before == 2, "the threads grew with the components"
    assert most[0] <= 2
    assert pool.max_running <= 2
    assert set(turns.values()) == {20}
    _closed(pool)


def test_components_that_yield_take_turns_in_order() -> None:
    pool = TurnPool(1)
    order: list[int] = []

    def turn_of(i: int) -> Callable[[], float | None]:
        def turn() -> float | None:
            order.append(i)
            return None if order.count(i) == 3 else YIELD

        return turn

    handles = [pool.add(f"c{i}", turn_of(i)) for i in range(4)]
    pool.start()
    until(lambda: all(h.done for h in handles), "all done")
    assert order == [0, 1, 2, 3] * 3
    _closed(pool)


def test_a_woken_component_goes_before_those_that_yielded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A live stream's block is not queued behind max-speed streams' turns (within their
    longest wait, set out of reach here: a loaded machine's slow turn must not count)."""
    monkeypatch.setattr(turns, "BULK_MAX_WAIT_S", 3600.0)
    pool = TurnPool(1)
    order: list[str] = []
    live_h: list[TurnHandle] = []

    def bulk(name: str) -> Callable[[], float | None]:
        def turn() -> float | None:
            order.append(name)
            if name == "a" and order.count("a") == 2:
                live_h[0].wake()  # the live stream's data arrives during a's turn
            return None if order.count(name) == 4 else YIELD

        return turn

    def live() -> float | None:
        order.append("live")
        return None if order.count("live") == 2 else 3600.0  # parked: only a wake

    handles = [pool.add(n, bulk(n)) for n in "abc"]
    live_h.append(pool.add("live", live))
    pool.start()
    until(lambda: all(h.done for h in [*handles, *live_h]), "all done")
    # b and c had yielded before a's second turn, yet the woken one went first
    assert order[:6] == ["a", "b", "c", "live", "a", "live"]
    assert order[6:] == ["b", "c", "a", "b", "c", "a", "b", "c"]
    _closed(pool)


def test_a_parked_component_runs_when_woken_or_when_its_time_comes() -> None:
    pool = TurnPool(1)
    runs: list[str] = []
    woken_while_running = threading.Event()
    h_box: list[object] = []

    def waiter() -> float | None:
        runs.append("w")
        return None if len(runs) >= 3 else 3600.0

    def timed() -> float | None:
        runs.append("t")
        return None if runs.count("t") == 2 else 0.05

    def self_waking() -> float | None:
        # woken while its turn runs: the next turn comes at once, not in an hour
        if not woken_while_running.is_set():
            woken_while_running.set()
            h_box[0].wake()  # type: ignore[attr-defined]
            return 3600.0
        runs.append("s")
        return None

    hw = pool.add("waiter", waiter)
    ht = pool.add("timed", timed)
    h_box.append(pool.add("self", self_waking))
    pool.start()
    until(lambda: runs.count("t") == 2, "the timer brought the second turn")
    until(lambda: "s" in runs, "a wake during the turn was not lost")
    assert runs.count("w") == 1
    hw.wake()
    until(lambda: runs.count("w") == 2, "the wake brought the turn")
    assert ht.done
    _closed(pool)


def test_a_stuck_turn_gets_its_worker_replaced_and_the_extra_one_ends_after() -> None:
    pool = TurnPool(1)
    release = threading.Event()
    entered = threading.Event()
    others = [0]

    def stuck() -> float | None:
        entered.set()
        release.wait(60)
        return None

    def other() -> float | None:
        others[0] += 1
        return None if others[0] >= 50 else 0.001

    pool.add("stuck", stuck)
    pool.start()
    entered.wait(30)
    h = pool.add("other", other)
    until(lambda: pool.tend() == 1, "a worker was started beside the stuck one")
    until(lambda: h.done, "the other component ran beside the stuck one")
    assert pool.threads == 2
    release.set()
    until(lambda: pool.threads == 1, "the extra worker ended once the stuck one was back")
    _closed(pool)


def test_a_turn_that_raises_does_not_end_its_worker() -> None:
    pool = TurnPool(1)
    ran: list[str] = []

    def bad() -> float | None:
        ran.append("bad")
        raise RuntimeError("a bug")

    def good() -> float | None:
        ran.append("good")
        return None

    hb = pool.add("bad", bad)
    hg = pool.add("good", good)
    pool.start()
    until(lambda: hg.done and hb.done, "both ran")
    assert ran == ["bad", "good"]
    _closed(pool)


def test_one_turn_of_those_that_yielded_at_a_time_and_a_live_one_beside_it() -> None:
    """Max-speed turns (all Python, one GIL) take one worker; another stays free for live
    turns."""
    pool = TurnPool(2)
    lock = threading.Lock()
    bulk_inside = [0]
    bulk_most = [0]
    live_beside = threading.Event()
    stop = threading.Event()

    turns: dict[str, int] = {}

    def bulk_of(name: str) -> Callable[[], float | None]:
        def bulk() -> float | None:
            turns[name] = turns.get(name, 0) + 1
            counted = turns[name] > 1  # (a first turn is not one that yielded)
            with lock:
                bulk_inside[0] += counted
                bulk_most[0] = max(bulk_most[0], bulk_inside[0])
            live_beside.wait(0.002)  # a turn's work
            with lock:
                bulk_inside[0] -= counted
            return None if stop.is_set() else YIELD

        return bulk

    def live() -> float | None:
        with lock:
            if bulk_inside[0]:
                live_beside.set()  # ran while a bulk turn was running
        return None if live_beside.is_set() else 0.001

    handles = [pool.add(f"b{i}", bulk_of(f"b{i}")) for i in range(4)]
    hl = pool.add("live", live)
    pool.start()
    until(lambda: hl.done, "the live component ran beside a bulk turn")
    stop.set()
    until(lambda: all(h.done for h in handles), "bulk done")
    assert bulk_most[0] == 1
    _closed(pool)
