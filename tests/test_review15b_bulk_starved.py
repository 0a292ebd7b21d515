"""Review of issue 15 (streams in turns): a max-speed stream must keep getting turns
while live streams keep the workers busy (ADR 0008: "each queue is first come, first
served, so no component starves").

Found: a worker always takes a live turn before a yielded one, so while some live turn
is ready whenever a worker looks, the max-speed streams get no turn at all: with 32
live synthetic streams at 4 kHz (speed 40, blocks of 4) every live block is scored
(no drops, the process at ~90% of one CPU of two) but the max-speed stream scored no
window after its first turns; its heartbeat ages, it turns `hung`, `health.live` goes
false and the watchdog is withheld: systemd would kill an agent whose live streams are
all keeping up.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.service.turns import YIELD, TurnPool
from tests.agentutil import MODELS, AgentProc


def test_a_yielded_component_gets_turns_while_live_turns_are_always_ready() -> None:
    pool = TurnPool(2)
    stop = threading.Event()
    bulk_turns = [0]

    def live() -> float | None:  # a live stream whose samples are in again at every turn
        x = 0
        for i in range(20_000):  # Python work under the GIL, as a block's is
            x += i
        return None if stop.is_set() else 0.0

    def bulk() -> float | None:
        bulk_turns[0] += 1
        return None if stop.is_set() else YIELD

    for i in range(4):
        pool.add(f"live{i}", live)
    pool.start()
    time.sleep(0.5)  # the live turns keep both workers going
    pool.add("bulk", bulk)
    try:
        deadline = time.monotonic() + 10
        while bulk_turns[0] < 20 and time.monotonic() < deadline:
            pool.tend()
            time.sleep(0.1)
        assert bulk_turns[0] >= 20, f"the max-speed component had {bulk_turns[0]} turns in 10 s"
    finally:
        stop.set()
        pool.close()
        pool.join(time.monotonic() + 10)


def _bulk(st: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    w: int = next(s["windows"] for s in st["streams"] if s["name"] == "bulk")
    c: dict[str, Any] = next(
        c for c in st["supervisor"]["components"] if c["name"] == "stream-bulk"
    )
    return w, c


def test_a_max_speed_stream_keeps_scoring_beside_busy_live_streams(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    live = "".join(
        f'[[streams]]\nname = "l{i}"\nvariant = "int8-onnx"\n'
        'source = { kind = "synthetic", speed = 40.0, block = 4 }\n'
        for i in range(32)
    )
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        f'device_id = "gw-review15b"\nmodels_dir = "{MODELS}"\n[mqtt]\nenabled = false\n'
        f'[logging]\nformat = "plain"\n'
        '[[streams]]\nname = "bulk"\nvariant = "int8-onnx"\n'
        'source = { kind = "synthetic", speed = 0.0 }\n' + live
    )
    a = AgentProc(cfg, tmp_path / "state", tmp_path / "a.log")
    agents.append(a)
    st = a.until(lambda s: s["windows_total"] > 10_000 and s, 60, "the live streams score")
    w0, _ = _bulk(st)
    st = a.until(
        lambda s: (_bulk(s)[0] > w0 or _bulk(s)[1]["hung"]) and s,
        30,
        "the max-speed stream scored more windows (or went hung)",
    )
    w1, comp = _bulk(st)
    assert w1 > w0, f"the max-speed stream got no turn beside the live ones: {comp}"
    assert not comp["hung"]
    assert st["health"]["live"], "the watchdog is not withheld while every stream scores"
    assert a.stop() == 0
