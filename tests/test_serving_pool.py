"""Five model families asked for in turn through the endpoint, under a model memory
budget that holds the stream's model and two more: they load on demand and are
evicted, the pool's measured memory stays under the budget, and the running
stream's model is never evicted.

The agent runs in this process (the real Agent, stream, pool, scheduler and HTTP
endpoint) so the test can set a budget finer than a profile's whole megabytes from
the charges measured for these models (`ModelPool.set_budget`)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.reporting.reporter import Reporter
from edge_agent.runtime.model import find_models
from tests.agentutil import MODELS, REPO
from tests.serving_agent import TOKEN, Served, free_port

STREAM_FAMILY = "vibration-ae"
OTHERS = ["inspection-ae", "skab-ae", "skab-pca", "skab-zsq"]
CARDS = {c.name: c for c in find_models(MODELS)}

# First-load charges as the agent's pool measures them, in a fresh process that
# already holds the stream's model (the runtime's set-up is charged to that one).
MEASURE = """
import json, sys
from pathlib import Path
from edge_agent.profiles import load_profiles, select
from edge_agent.runtime.model import resolve_model_dir
from edge_agent.runtime.pool import ModelPool
profile = select("auto", load_profiles()).profile
pool = ModelPool(profile, budget_mb=4096)
models = Path(sys.argv[1])
for fam in sys.argv[2:]:
    pool.acquire(resolve_model_dir(fam, "auto", profile, models), fam)
print(json.dumps({e.model.card.family: e.charge_mb for e in pool.entries()}))
"""


def _first_load_charges() -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, str(MODELS), STREAM_FAMILY, *OTHERS],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
    )  # fmt: skip
    charges: dict[str, float] = json.loads(r.stdout)
    return charges


def test_five_families_load_and_evict_under_a_budget_for_three(tmp_path: Path) -> None:
    charges = _first_load_charges()
    others = sorted((charges[f] for f in OTHERS), reverse=True)
    # room for the two largest besides the stream's model; all four never fit
    assert sum(others) > others[0] + others[1] + 0.05
    port = free_port()
    (tmp_path / "token").write_text(TOKEN)
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(
        f"""
device_id = "gw-pool"
state_dir = "{tmp_path / "state"}"
models_dir = "{MODELS}"
[mqtt]
enabled = false
[serving]
enabled = true
port = {port}
token_file = "{tmp_path / "token"}"
deadline_ms = 5000
[[streams]]
name = "line"
model = "{STREAM_FAMILY}"
[streams.source]
kind = "synthetic"
rate_hz = 100.0
block = 16
"""
    )
    cfg = load_config(cfg_file)
    agent = Agent(cfg)
    agent.prepare()
    agent.attach_reporter(Reporter(cfg, Path(cfg.state_dir), agent.birth))
    pool = agent.pool
    assert pool is not None
    (stream_entry,) = pool.entries()
    budget = stream_entry.charge_mb + others[0] + others[1] + 0.05
    pool.set_budget(budget)
    runner = threading.Thread(target=agent.run, name="agent-under-test")
    runner.start()
    served = Served(f"http://127.0.0.1:{port}", port, tmp_path / "state", tmp_path, None)  # type: ignore[arg-type]
    try:
        _wait(lambda: served.request("/v2/health/ready", timeout=5)[0] == 200)
        seen_loaded: set[str] = set()
        windows_before = agent.streams[0].pipeline.stats.windows
        for _round in range(2):
            for fam in [STREAM_FAMILY, *OTHERS]:
                card = next(c for c in CARDS.values() if c.family == fam)  # same shape
                x = card.golden.inputs[:2]
                body = {
                    "inputs": [
                        {"name": card.input.name, "shape": list(x.shape), "datatype": "FP32",
                         "data": x.ravel().tolist()}
                    ]
                }  # fmt: skip
                status, doc, _ = served.request(f"/v2/models/{fam}/infer", body)
                assert status == 200, doc
                snap: dict[str, Any] = served.request("/v2/models/stats")[1]["pool"]
                loaded = {m["model"]: m for m in snap["models"]}
                variant = doc["parameters"]["variant"]
                seen_loaded.add(variant)
                # measured memory under the budget, the stream's model held by the stream
                assert snap["used_mb"] <= snap["budget_mb"] + 1e-9, snap
                assert snap["budget_mb"] == budget
                assert "line" in loaded[stream_entry.model.card.name]["users"], snap
                assert variant in loaded  # just used: loaded on demand, still there
        assert len(seen_loaded) == 5
        final = pool.snapshot()
        assert final["evictions"] >= 2, final  # all five never fit at once
        assert len(final["models"]) < 5, final
        # the stream scored throughout on its (never evicted) model
        _wait(lambda: agent.streams[0].pipeline.stats.windows > windows_before + 5)
        assert agent.streams[0].runner.dropped_blocks == 0
        assert not agent.streams[0].error
    finally:
        agent.request_stop("test over")
        runner.join(60)
    assert not runner.is_alive()


def _wait(cond: Any, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.1)
