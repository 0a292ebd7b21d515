"""The five-family pool scenario, run in a fresh interpreter by test_serving_pool.py.

A model's charge is what the process's RSS grew by when it loaded; in a long-lived
process (the test session) that depends on everything loaded before, in a fresh one it
repeats. So the real Agent (stream, pool, scheduler, HTTP endpoint) runs here, and the
budget is set (`ModelPool.set_budget`, finer than a profile's whole megabytes) from what
this process's pool measured. Prints what it observed as JSON; the test asserts.

    python tests/serving_pool_scenario.py WORKDIR
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.reporting.reporter import Reporter
from edge_agent.runtime.model import find_models
from tests.agentutil import MODELS
from tests.serving_agent import TOKEN, Served, free_port

STREAM_FAMILY = "vibration-ae"
FAMILIES = [STREAM_FAMILY, "inspection-ae", "skab-ae", "skab-pca", "skab-zsq"]
CARDS = {c.name: c for c in find_models(MODELS)}


def _infer(served: Served, family: str) -> tuple[int, dict[str, Any]]:
    card = next(c for c in CARDS.values() if c.family == family)  # variants share a shape
    x = card.golden.inputs[:2]
    body = {
        "inputs": [
            {"name": card.input.name, "shape": list(x.shape), "datatype": "FP32",
             "data": x.ravel().tolist()}
        ]
    }  # fmt: skip
    status, doc, _ = served.request(f"/v2/models/{family}/infer", body)
    return status, doc


def _pool(served: Served) -> dict[str, Any]:
    snap: dict[str, Any] = served.request("/v2/models/stats")[1]["pool"]
    return snap


def _wait(cond: Any, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def run(work: Path) -> dict[str, Any]:
    port = free_port()
    (work / "token").write_text(TOKEN)
    cfg_file = work / "agent.toml"
    cfg_file.write_text(
        f"""
device_id = "gw-pool"
state_dir = "{work / "state"}"
models_dir = "{MODELS}"
[mqtt]
enabled = false
[serving]
enabled = true
port = {port}
token_file = "{work / "token"}"
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
    out: dict[str, Any] = {"stream_model": stream_entry.model.card.name, "steps": []}
    runner = threading.Thread(target=agent.run, name="agent-under-test")
    runner.start()
    served = Served(f"http://127.0.0.1:{port}", port, work / "state", work, None)  # type: ignore[arg-type]
    try:
        out["ready"] = _wait(lambda: served.request("/v2/health/ready", timeout=5)[0] == 200)
        windows_before = agent.streams[0].pipeline.stats.windows
        # 1. the profile's budget holds them all: each loads on demand once
        out["first"] = [_infer(served, fam)[0] for fam in FAMILIES]
        out["all_loaded"] = _pool(served)
        charges = {m["model"]: m["charge_mb"] for m in out["all_loaded"]["models"]}
        others = sorted((mb for m, mb in charges.items() if m != out["stream_model"]), reverse=True)
        # 2. room for the stream's model and the two largest others
        out["budget"] = charges[out["stream_model"]] + others[0] + others[1] + 0.05
        out["others"] = others
        pool.set_budget(out["budget"])
        out["after_set_budget"] = _pool(served)
        # 3. the five asked for in turn, twice
        for _round in range(2):
            for fam in FAMILIES:
                status, doc = _infer(served, fam)
                out["steps"].append(
                    {"family": fam, "status": status, "doc": doc, "pool": _pool(served)}
                )
        final = pool.snapshot()
        out["final"] = final
        loaded_now = {m["model"] for m in final["models"]}

        def schedulers_match() -> bool:
            names = {c.name.rsplit("-", 1)[0] for c in agent.supervisor.statuses()}
            scheds = {n.removeprefix("scheduler-") for n in names if n.startswith("scheduler-")}
            return scheds == loaded_now

        out["schedulers_match"] = _wait(schedulers_match)
        out["stream_kept_scoring"] = _wait(
            lambda: agent.streams[0].pipeline.stats.windows > windows_before + 5
        )
        out["dropped_blocks"] = agent.streams[0].runner.dropped_blocks
        out["stream_error"] = agent.streams[0].error
    finally:
        agent.request_stop("scenario over")
        runner.join(60)
    out["stopped"] = not runner.is_alive()
    return out


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]))))
