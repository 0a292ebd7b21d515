"""Review of issue 15 (streams in turns): a max-speed stream that gave up past its restart
budget must score again when the supervisor tries it again (`retry_failed_s`).

Found: a source read in its stream's turn (pull mode: `speed = 0`) is stopped by the
give-up, but `SourceRunner.stop()` leaves `_pulling` set, so `alive` stays True; on the
retry `StreamRuntime.revive()` -> `restart_source()` sees an "alive" runner and keeps the
stopped one. The stream then turns for ever (supervisor: running, not hung), its source
says `stopped` and it never scores again. A live source (`speed = 1`) recovers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.sources.runner import SourceRunner, SourceState
from edge_agent.sources.synthetic import Options, SyntheticSource
from tests.agentutil import MODELS, AgentProc


def test_a_stopped_pull_mode_runner_is_not_alive() -> None:
    """`alive`: "False before start() and once it ended, for any reason" (runner.py)."""
    src = SyntheticSource("a", Options(speed=0.0))
    r = SourceRunner(src, merge_below=16)
    r.start()
    deadline = time.monotonic() + 30
    while not r.pulling and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.pulling, "the max-speed source is read in its consumer's turn"
    r.stop(timeout=2.0)
    assert r.state is SourceState.STOPPED
    assert not r.alive, "a stopped runner is not alive: a restart must replace it"


def _comp(st: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in st["supervisor"]["components"] if c["name"] == name)
    return found


@pytest.mark.parametrize("speed", [0.0, 1.0])
def test_a_stream_retried_after_its_budget_scores_again(
    tmp_path: Path, agents: list[AgentProc], speed: float
) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        f"""
device_id = "gw-review15b"
models_dir = "{MODELS}"
[mqtt]
enabled = false
[health]
restart_budget = 1
restart_window_s = 60
retry_failed_s = 1
[logging]
format = "plain"
[[streams]]
name = "a"
variant = "int8-onnx"
source = {{ kind = "synthetic", speed = {speed} }}
"""
    )
    # two raises: one restart (the budget), then past it: failed, given up, retried in 1 s
    a = AgentProc(
        cfg, tmp_path / "state", tmp_path / "a.log", {"EDGE_AGENT_TEST_FAULT": "stream-a,2"}
    )
    agents.append(a)
    a.until(
        lambda s: (
            _comp(s, "stream-a")["restarts"] >= 2 and _comp(s, "stream-a")["state"] == "running"
        ),
        60,
        "stream-a failed past its budget and was tried again",
    )
    st = a.until(
        lambda s: s["streams"][0]["windows"] > 0 and s,
        30,
        "the retried stream scores again (its source reopened by the retry)",
    )
    assert st["streams"][0]["source_state"] == "running"
    assert a.stop() == 0
