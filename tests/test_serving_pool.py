"""Five model families asked for in turn through the endpoint, under a model memory
budget that holds the stream's model and two more: they load on demand and are
evicted, the pool's measured memory stays under the budget, and the running
stream's model is never evicted.

The agent runs in this process (the real Agent, stream, pool, scheduler and HTTP
endpoint) so the test can set a budget finer than a profile's whole megabytes
(`ModelPool.set_budget`) from what the pool measured loading these models here:
a model's charge is what the process grew by, which depends on the process."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.reporting.reporter import Reporter
from edge_agent.runtime.model import find_models
from tests.agentutil import MODELS
from tests.serving_agent import TOKEN, Served, free_port

STREAM_FAMILY = "vibration-ae"
FAMILIES = [STREAM_FAMILY, "inspection-ae", "skab-ae", "skab-pca", "skab-zsq"]
CARDS = {c.name: c for c in find_models(MODELS)}


def _infer(served: Served, family: str) -> dict[str, Any]:
    card = next(c for c in CARDS.values() if c.family == family)  # variants share a shape
    x = card.golden.inputs[:2]
    body = {
        "inputs": [
            {"name": card.input.name, "shape": list(x.shape), "datatype": "FP32",
             "data": x.ravel().tolist()}
        ]
    }  # fmt: skip
    status, doc, _ = served.request(f"/v2/models/{family}/infer", body)
    assert status == 200, doc
    return doc


def _pool(served: Served) -> dict[str, Any]:
    snap: dict[str, Any] = served.request("/v2/models/stats")[1]["pool"]
    return snap


def test_five_families_load_and_evict_under_a_budget_for_three(tmp_path: Path) -> None:
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
    stream_model = stream_entry.model.card.name
    runner = threading.Thread(target=agent.run, name="agent-under-test")
    runner.start()
    served = Served(f"http://127.0.0.1:{port}", port, tmp_path / "state", tmp_path, None)  # type: ignore[arg-type]
    try:
        _wait(lambda: served.request("/v2/health/ready", timeout=5)[0] == 200)
        windows_before = agent.streams[0].pipeline.stats.windows
        # 1. the profile's budget (512 MB) holds them all: each loads on demand once
        for fam in FAMILIES:
            _infer(served, fam)
        snap = _pool(served)
        assert len(snap["models"]) == 5, snap
        charges = {m["model"]: m["charge_mb"] for m in snap["models"]}
        others = sorted((mb for m, mb in charges.items() if m != stream_model), reverse=True)
        # 2. a budget for the stream's model and the two largest others: the idle
        # models are evicted at once, least recently used first, until it fits
        budget = charges[stream_model] + others[0] + others[1] + 0.05
        assert sum(others) > others[0] + others[1] + 0.05  # all four do not fit
        pool.set_budget(budget)
        snap = _pool(served)
        assert snap["evictions"] >= 1, snap
        assert snap["used_mb"] <= budget, snap
        evicted_before = snap["evictions"]
        # 3. the five asked for in turn, twice: each is there when used, loaded again
        # when it was evicted; never over the budget; the stream's model stays
        seen: set[str] = set()
        for _round in range(2):
            for fam in FAMILIES:
                variant = _infer(served, fam)["parameters"]["variant"]
                seen.add(variant)
                snap = _pool(served)
                loaded = {m["model"]: m for m in snap["models"]}
                assert variant in loaded, snap
                assert snap["used_mb"] <= snap["budget_mb"] + 1e-9, snap
                assert snap["budget_mb"] == budget
                assert "line" in loaded[stream_model]["users"], snap
        assert len(seen) == 5
        final = pool.snapshot()
        # the one evicted comes back by evicting others (its measured cost is known)
        assert final["evictions"] > evicted_before, final
        # an evicted model's scheduler worker leaves the supervisor's table (status
        # does not grow with every load); the loaded models' workers run
        loaded_now = {m["model"] for m in final["models"]}

        def schedulers_match() -> bool:
            names = {c.name.rsplit("-", 1)[0] for c in agent.supervisor.statuses()}
            scheds = {n.removeprefix("scheduler-") for n in names if n.startswith("scheduler-")}
            return scheds == loaded_now

        _wait(schedulers_match)
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
