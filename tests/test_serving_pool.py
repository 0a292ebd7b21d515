"""Five model families asked for in turn through the endpoint, under a model memory
budget that holds the stream's model and two more: they load on demand and are
evicted, the pool's measured memory stays under the budget, and the running
stream's model is never evicted. The agent runs in a fresh process
(tests/serving_pool_scenario.py says why); this test checks what it observed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.agentutil import REPO


def test_five_families_load_and_evict_under_a_budget_for_three(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "tests" / "serving_pool_scenario.py"), str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    stream_model = out["stream_model"]
    assert out["ready"]
    # 1. under the profile's budget every family loads on demand and stays
    assert out["first"] == [200] * 5
    assert len(out["all_loaded"]["models"]) == 5
    # 2. the smaller budget evicts idle models at once (all four others do not fit)
    others, budget = out["others"], out["budget"]
    assert sum(others) > others[0] + others[1] + 0.05
    after = out["after_set_budget"]
    assert after["evictions"] >= 1, after
    assert after["used_mb"] <= budget, after
    # 3. each family, asked for in turn (twice), is scored by a loaded model, loaded
    # again when it had been evicted; the measured total never exceeds the budget and
    # the stream's model is held by the stream throughout
    variants = set()
    for step in out["steps"]:
        assert step["status"] == 200, step
        pool = step["pool"]
        loaded = {m["model"]: m for m in pool["models"]}
        variant = step["doc"]["parameters"]["variant"]
        variants.add(variant)
        assert variant in loaded, step
        assert pool["used_mb"] <= pool["budget_mb"] + 1e-9, step
        assert pool["budget_mb"] == budget
        assert "line" in loaded[stream_model]["users"], step
    assert len(variants) == 5
    # the one evicted came back by evicting others (its measured cost is known)
    assert out["final"]["evictions"] > after["evictions"], out["final"]
    # evicted models' scheduler workers left the supervisor's table
    assert out["schedulers_match"]
    # the stream scored throughout on its never-evicted model, dropping nothing
    assert out["stream_kept_scoring"]
    assert out["dropped_blocks"] == 0
    assert not out["stream_error"]
    assert out["stopped"]
