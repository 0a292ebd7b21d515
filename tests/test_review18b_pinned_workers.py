"""Review of issue 18 (SHARE_CPU): only the endpoint's connection threads may be pinned.

docs/serving.md: "The connection threads run on one CPU ... the streams, the
scheduler's workers and the rest of the agent are not pinned." But a connection
thread pins itself (os.sched_setaffinity) and then, for a model the endpoint loads on
demand, the model pool's on_load starts that model's scheduler worker from this very
thread; Linux gives a new thread its creator's affinity, so every worker (and anything
else a connection thread starts) is pinned to the one CPU for the agent's lifetime,
and with it every stream that later scores on that model.

Expected: once the clients have gone, no thread of the agent is held to fewer CPUs
than the process may use. A real `edge-agent run` process; affinity read from /proc."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from edge_agent.runtime.model import find_models
from tests.agentutil import MODELS
from tests.serving_agent import serving_agent

CARDS = {c.name: c for c in find_models(MODELS)}
# models no demo stream uses: each is loaded on demand by the endpoint
NAMES = ["skab-pca-fp32-onnx", "inspection-ae-fp32-onnx", "skab-ae-int8-tflite"]


def _narrowed_threads(pid: int, allowed: str) -> list[tuple[str, str]]:
    """(thread id, Cpus_allowed_list) of the threads of `pid` not allowed `allowed`."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        cpus = next(
            line.split(":", 1)[1].strip()
            for line in status.splitlines()
            if line.startswith("Cpus_allowed_list:")
        )
        if cpus != allowed:
            out.append((task.name, cpus))
    return out


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="SHARE_CPU pins nothing on one CPU",
)
def test_scheduler_workers_of_models_loaded_by_the_endpoint_are_not_pinned(
    tmp_path: Path,
) -> None:
    with serving_agent(tmp_path, "deadline_ms = 10000", demo=False) as agent:
        pid = agent.proc.pid
        allowed = next(
            line.split(":", 1)[1].strip()
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("Cpus_allowed_list:")
        )
        for name in NAMES:
            card = CARDS[name]
            x = card.golden.inputs[:1]
            body = {
                "inputs": [
                    {
                        "name": card.input.name,
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "data": x.reshape(-1).tolist(),
                    }
                ]
            }
            status, doc, _ = agent.request(f"/v2/models/{name}/infer", body)
            assert status == 200, doc
        # every connection is closed: its thread ends (after at most its linger)
        deadline = time.monotonic() + 20
        narrowed = _narrowed_threads(pid, allowed)
        while narrowed and time.monotonic() < deadline:
            time.sleep(0.5)
            narrowed = _narrowed_threads(pid, allowed)
        assert not narrowed, (
            f"threads of the agent pinned after every client left (process: {allowed}): "
            f"{narrowed}; docs/serving.md says only connection threads are pinned"
        )
