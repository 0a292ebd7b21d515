"""A client flooding the endpoint does not make a 100 Hz stream drop a block or hold its
windows back past the per-window latency budget: the stream's windows are served first
on the shared scheduler, and the flood gets fast refusals (503/429 with Retry-After),
never an unbounded queue."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge_agent.runtime.model import find_models
from tests.agentutil import MODELS
from tests.serving_agent import serving_agent

FLOOD_S = 6.0
CLIENTS = 8  # below max_connections: refusals come from the in-flight and rate limits


def test_flood_gets_refusals_and_the_realtime_stream_drops_nothing(tmp_path: Path) -> None:
    card = next(c for c in find_models(MODELS) if c.name == "vibration-ae-int8-onnx")
    x = card.golden.inputs[:1]  # batch 1, the demo stream's model
    body = {
        "inputs": [
            {
                "name": "window",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    extra = "max_inflight = 2\nrate_per_s = 400"
    with serving_agent(tmp_path, extra) as agent:
        # the demo stream runs in real time at 100 Hz; wait until it scores
        deadline = time.monotonic() + 60
        while True:
            st = agent.status() if (agent.state / "status.json").exists() else {}
            if st.get("streams") and st["streams"][0]["windows"] > 0:
                break
            assert time.monotonic() < deadline, agent.log.read_text()
            time.sleep(0.2)
        before = st["streams"][0]
        counts: dict[int, int] = {}
        bad: list[str] = []
        lock = threading.Lock()
        stop = time.monotonic() + FLOOD_S

        def flood() -> None:
            while time.monotonic() < stop:
                status, doc, headers = agent.request(
                    "/v2/models/vibration-ae/infer", body, timeout=30
                )
                with lock:
                    counts[status] = counts.get(status, 0) + 1
                    if status in (429, 503) and (
                        "Retry-After" not in headers or "error" not in doc
                    ):
                        bad.append(f"{status} {headers} {doc}")
                    elif status not in (200, 429, 503):
                        bad.append(f"{status} {doc}")

        threads = [threading.Thread(target=flood) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # one more status tick after the flood, so the stream's counts cover it
        tick = time.monotonic() + 60
        while agent.status()["streams"][0]["windows"] <= before["windows"] + 10:
            assert time.monotonic() < tick
            time.sleep(0.2)
        after = agent.status()["streams"][0]
        stats = agent.request("/v2/models/stats")[1]

    assert not bad, bad[:5]
    assert counts.get(200, 0) > 0, counts
    refused = counts.get(429, 0) + counts.get(503, 0)
    assert refused > 0, counts  # the flood was told to back off ...
    assert stats["endpoint"]["busy"] + stats["endpoint"]["rate_limited"] == refused
    # ... and the real-time stream lost nothing while it was refused
    assert after["dropped_blocks"] == before["dropped_blocks"] == 0, after
    assert after["windows"] > before["windows"]
    assert not after["error"]
    # nor were its windows held back past the profile's per-window latency budget: they
    # go before the flood's, so they wait for one batch at most. Counted, not timed by
    # the test: on a loaded 2-core machine a wait now and then runs over (one of nine
    # queued, 7.6 ms against 5, with three busy loops beside it), a held-back stream's
    # would all be.
    sched = next(s for s in stats["schedulers"] if s["model"] == card.name)
    assert sched["realtime_late"] <= (after["windows"] - before["windows"]) // 10, sched
