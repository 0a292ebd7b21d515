"""A real Endpoint in this process on a loopback port, for tests at the socket level:
the bundled models' catalogue, a model pool and a scheduler worker per loaded model, no
agent around it (tests/serving_agent.py runs the whole agent)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_agent.config import ServingConfig
from edge_agent.profiles import load_profiles, select
from edge_agent.runtime.pool import ModelPool
from edge_agent.runtime.scheduler import InferenceScheduler, SchedulerSet
from edge_agent.serving.http import Endpoint
from edge_agent.serving.models import Catalogue, Scorer
from tests.agentutil import MODELS


class StopLoop:
    """What a supervised body is given (service.supervisor.Loop): a stop event and a
    heartbeat, which nothing here watches."""

    def __init__(self) -> None:
        self.stop = threading.Event()

    def beat(self) -> None:
        pass


@contextmanager
def running_endpoint(tmp_path: Path, token: str, **cfg: Any) -> Iterator[Endpoint]:
    """The endpoint serving with `token` (its file 0640, as docs/serving.md installs it)
    and the ServingConfig fields `cfg`; stopped and closed on exit."""
    tok = tmp_path / "token"
    tok.write_text(token)
    tok.chmod(0o640)
    config = ServingConfig(enabled=True, port=0, token_file=str(tok), **cfg)
    profile = select("auto", load_profiles()).profile
    pool, scheds = ModelPool(profile), SchedulerSet(profile)
    loop = StopLoop()

    def worker(_name: str, s: InferenceScheduler) -> None:
        threading.Thread(target=s.run, args=(loop,), daemon=True).start()

    scheds.on_new = worker
    pool.on_load = lambda e: scheds.add(e.model)
    catalogue = Catalogue(MODELS, profile)
    ep = Endpoint(config, catalogue, Scorer(catalogue, pool, scheds))
    t = threading.Thread(target=ep.run, args=(loop,), daemon=True)
    t.start()
    try:
        yield ep
    finally:
        loop.stop.set()
        t.join(10)
        ep.close()


def post(ep: Endpoint, target: str, body: bytes, token: str) -> tuple[int, dict[str, Any]]:
    """POST a JSON `body` to `target` on `ep` with the bearer `token`: (status, JSON)."""
    status, doc, _headers = post_with_headers(ep, target, body, token)
    return status, doc


def post_with_headers(
    ep: Endpoint, target: str, body: bytes, token: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """As `post`, with the answer's headers: (status, JSON, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=30)
    try:
        conn.request(
            "POST",
            target,
            body,
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        r = conn.getresponse()
        return r.status, json.loads(r.read()), dict(r.headers)
    finally:
        conn.close()
