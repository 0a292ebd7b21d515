"""Review of issue 15 (streams in turns): when a stuck turn comes back, its component's
next turn must not wait for an idle worker's 5 s look-around.

Found: the worker whose turn was stuck is surplus once it is back (tend() started one
beside it), so it ends right after queueing the component's next turn, assuming
another worker takes it; but `_after_locked` only wakes another worker when more than
one turn is ready (this worker was to take one itself). The idle workers sleep in
`cv.wait(IDLE_WAIT_S)`, so the component (a live stream woken by its samples during the
stall, or a max-speed one) gets its next turn only when an idle worker's 5 s wait runs
out (measured 2.4 s here; up to 5 s): its backlog waits, and a live queue may drop blocks.
"""

from __future__ import annotations

import threading
import time

import pytest

from edge_agent.service.turns import STUCK_S, YIELD, TurnPool


@pytest.mark.parametrize("how", ["max-speed", "woken-live"])
def test_the_next_turn_after_a_stuck_one_comes_back_runs_at_once(how: str) -> None:
    pool = TurnPool(2)
    release = threading.Event()
    stuck = threading.Event()
    turns = [0]
    back_at = [0.0]
    next_at = [0.0]

    def turn() -> float | None:
        turns[0] += 1
        if turns[0] == 3:
            stuck.set()
            release.wait(60)
            back_at[0] = time.monotonic()
        elif turns[0] == 4:
            next_at[0] = time.monotonic()
        if how == "max-speed":
            return YIELD
        return 0.25 if turns[0] < 3 else 30.0  # a live stream: woken by its samples

    h = pool.add("a", turn)
    pool.start()
    try:
        deadline = time.monotonic() + 30
        while not stuck.is_set():
            assert time.monotonic() < deadline, "the third turn started"
            time.sleep(0.01)
        # stuck past STUCK_S, with the agent's tick calling tend(): a worker is added
        end = time.monotonic() + 2.5 * STUCK_S
        while time.monotonic() < end:
            pool.tend()
            time.sleep(0.1)
        assert pool.extra_started >= 1
        if how == "woken-live":
            h.wake()  # its source queued samples meanwhile
        release.set()
        deadline = time.monotonic() + 10
        while not next_at[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert next_at[0], "the next turn came"
        waited = next_at[0] - back_at[0]
        assert waited < 1.0, f"the next turn waited {waited:.2f} s for an idle worker"
    finally:
        release.set()
        pool.close()
        pool.join(time.monotonic() + 10)
