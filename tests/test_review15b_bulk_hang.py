"""Review of issue 15 (streams in turns): a max-speed turn that does not return must not
stop the other max-speed streams (ADR 0008: "the agent's tick calls supervisor.tend():
... another worker starts, so the other streams keep their turns").

Found: the pool runs at most `bulk_workers` (one) turns of components that yielded at
once, and a stuck yielded turn keeps its bulk slot: `tend()` starts a worker, but that
worker may only take live turns. Every other max-speed stream stops scoring for as long
as the one turn hangs, and is shown `hung` itself (it never got a turn).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.service.turns import STUCK_S, YIELD, TurnPool
from tests.agentutil import MODELS, AgentProc


def _until(
    cond: Callable[[], bool], what: str, limit_s: float = 30.0, tend: TurnPool | None = None
) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, what
        if tend is not None:
            tend.tend()  # as the agent's 1 s tick does
        time.sleep(0.05)


def test_a_stuck_max_speed_turn_does_not_stop_the_other_max_speed_components() -> None:
    pool = TurnPool(2)
    release = threading.Event()
    stuck = threading.Event()
    a_turns = [0]
    b_turns = [0]

    def a() -> float | None:
        a_turns[0] += 1
        if a_turns[0] == 3:  # a yielded turn (taken from the max-speed queue) that blocks
            stuck.set()
            release.wait(60)
        return YIELD

    def b() -> float | None:
        b_turns[0] += 1
        time.sleep(0.001)
        return YIELD

    pool.add("a", a)
    pool.add("b", b)
    pool.start()
    try:
        _until(stuck.is_set, "a's third turn started")
        time.sleep(STUCK_S * 1.5)  # a's turn counts as stuck now
        before = b_turns[0]
        _until(
            lambda: b_turns[0] >= before + 50,
            "b (max speed) kept taking turns while a's turn is stuck, with tend() called",
            limit_s=20,
            tend=pool,
        )
    finally:
        release.set()
        pool.close()
        pool.join(time.monotonic() + 10)


def _windows(st: dict[str, Any], name: str) -> int:
    n: int = next(s["windows"] for s in st["streams"] if s["name"] == name)
    return n


def _comp(st: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in st["supervisor"]["components"] if c["name"] == name)
    return found


def test_a_hung_max_speed_stream_leaves_the_other_max_speed_stream_scoring(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    streams = "".join(
        f'[[streams]]\nname = "{n}"\nvariant = "int8-onnx"\n'
        'source = { kind = "synthetic", speed = 0.0 }\n'
        for n in ("a", "b")
    )
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        f'device_id = "gw-review15b"\nmodels_dir = "{MODELS}"\n[mqtt]\nenabled = false\n'
        f'[logging]\nformat = "plain"\n{streams}'
    )
    # a's 20th heartbeat hangs: by then its turns come from the max-speed queue
    env = {"EDGE_AGENT_TEST_FAULT": "hang:stream-a,20"}
    a = AgentProc(cfg, tmp_path / "state", tmp_path / "a.log", env)
    agents.append(a)
    a.until(lambda s: _comp(s, "stream-a")["hung"], 60, "stream-a hung (injected)")
    st = a.until(lambda s: s, 5, "a status")
    w0 = _windows(st, "b")
    st = a.until(
        lambda s: _windows(s, "b") > w0 + 100 and s,
        30,
        "stream b (max speed, not hung) keeps scoring while stream a's turn hangs",
    )
    assert not _comp(st, "stream-b")["hung"], "b turns: only a is hung"
    t0 = time.monotonic()
    assert a.stop() == 0
    assert time.monotonic() - t0 < 20, "stopped within the 20 s deadline"
