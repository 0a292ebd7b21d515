"""Review of issue 15 (streams in turns), after 1e4d6f7 (extra workers capped at one per
CPU): a healthy stream must keep scoring while other streams' turns hang (docs/status.md:
"a stream stuck in a call that does not return gets its worker replaced after 1 s and
the others keep scoring").

Found: tend() starts at most one extra worker per CPU, so once twice as many turns as
CPUs hang (streams on a wedged accelerator, a stalled disk), every worker is held and
the healthy streams get no turn: on 2 CPUs with 4 streams hung, a fifth (healthy, 100 Hz)
stream stopped at 9 windows and went `hung` itself. With a thread per stream it scored on.
The cap came from a reviewer's measure of "slow turns growing the pool" that was in fact
16 streams' first turns (queued as live ones) all blocking on one lock; later max-speed
turns did not grow the pool before the cap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.agentutil import MODELS, AgentProc


def _ok_windows(st: dict[str, Any]) -> int:
    n: int = next(s["windows"] for s in st["streams"] if s["name"] == "ok")
    return n


def test_a_healthy_stream_scores_on_while_twice_the_cpus_of_streams_hang(
    tmp_path: Path, agents: list[AgentProc]
) -> None:
    hung = [f"h{i}" for i in range(2 * (os.cpu_count() or 1))]  # the pool's cap, reached
    streams = "".join(
        f'[[streams]]\nname = "{n}"\nvariant = "int8-onnx"\n'
        'source = { kind = "synthetic", speed = 1.0 }\n'
        for n in [*hung, "ok"]
    )
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        f'device_id = "gw-review15b"\nmodels_dir = "{MODELS}"\n[mqtt]\nenabled = false\n'
        f'[logging]\nformat = "plain"\n{streams}'
    )
    env = {"EDGE_AGENT_TEST_FAULT": ";".join(f"hang:stream-{n},3" for n in hung)}
    a = AgentProc(cfg, tmp_path / "state", tmp_path / "a.log", env)
    agents.append(a)

    def all_hung(s: dict[str, Any]) -> bool:
        comps = {c["name"]: c for c in s["supervisor"]["components"]}
        return all(comps[f"stream-{n}"]["hung"] for n in hung)

    st = a.until(lambda s: all_hung(s) and s, 90, "every injected hang seen")
    w0 = _ok_windows(st)
    a.until(
        lambda s: _ok_windows(s) >= w0 + 20,
        30,
        "the healthy stream keeps scoring (about 6 windows a second) beside the hung ones",
    )
    assert a.stop() == 0
