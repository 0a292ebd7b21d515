"""A running agent whose state filesystem is full cannot write status.json: `edge-agent
status` must say so (disk full, free space; DEGRADED) instead of "not responding"
(DOWN), which sends a technician to restart an agent that is scoring fine."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from edge_agent.fsutil import atomic_write_json
from edge_agent.service.status import Snapshot, Verdict, assess
from tests.agentutil import run_cli
from tests.diskfaults import fill_up, small_fs
from tests.test_status import state


def _stale(free: int | None, alive: bool = True) -> Snapshot:
    now = time.time()
    st = state(now, written_at=now - 60)
    return Snapshot("/var/lib/edge-agent", True, st, pid_alive=alive, free_bytes=free)


def test_stale_status_on_a_full_filesystem_says_disk_full_not_not_responding() -> None:
    a = assess(_stale(free=4096), time.time())
    assert a.verdict is Verdict.DEGRADED
    assert a.stale
    assert a.reasons[0].startswith(f"disk full: the agent (pid {os.getpid()}) runs"), a.reasons
    assert "free space there" in a.reasons[0]


def test_stale_status_with_space_left_is_still_not_responding() -> None:
    for free in (None, 50 << 20):
        a = assess(_stale(free=free), time.time())
        assert a.verdict is Verdict.DOWN
        assert a.reasons[0].startswith("agent not responding"), a.reasons


def test_a_dead_agent_on_a_full_disk_is_down() -> None:
    a = assess(_stale(free=0, alive=False), time.time())
    assert a.verdict is Verdict.DOWN
    assert "is gone (crashed or killed)" in a.reasons[0]


def test_status_cli_on_a_really_full_tmpfs(tmp_path: Path) -> None:
    with small_fs(tmp_path / "state", "1m") as sd:
        now = time.time()
        # the last status a running agent (this process stands in for it) wrote
        atomic_write_json(sd / "status.json", state(now, written_at=now - 30))
        fill_up(sd / "filler", chunk=4096)
        res = run_cli("status", "--state-dir", str(sd), "--json", timeout=30)
        doc = json.loads(res.stdout)
        assert doc["verdict"] == "DEGRADED", res.stdout
        assert res.returncode == 1
        assert doc["reasons"][0].startswith("disk full:"), doc["reasons"]
        text = run_cli("status", "--state-dir", str(sd), timeout=30).stdout
        assert "disk full" in text, text
        assert "not responding" not in text, text
