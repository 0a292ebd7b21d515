"""Remote-command parts without a broker: the router's worker and its bound, multi-part
replies, the log ring's bounds, the support bundle's redaction, size bound and chunks."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import threading
from typing import Any

import pytest

from edge_agent.config import parse_config
from edge_agent.errors import EdgeAgentError
from edge_agent.reporting.commands import MAX_PENDING, CommandRouter, MultiPart, Reply
from edge_agent.reporting.topics import DeviceTopics
from edge_agent.service import support_bundle as sb
from edge_agent.service.log_ring import MAX_LINE_CHARS, LogRing


class Replies:
    def __init__(self) -> None:
        self.items: list[Reply] = []
        self.cv = threading.Condition()

    def __call__(self, r: Reply) -> None:
        with self.cv:
            self.items.append(r)
            self.cv.notify_all()

    def wait(self, n: int) -> list[dict[str, Any]]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.items) >= n, 30)
            return [json.loads(r.payload) for r in self.items]


def test_slow_commands_queue_on_one_worker_and_the_next_is_refused_busy() -> None:
    router = CommandRouter(DeviceTopics("edge", "gw"))
    gate = threading.Event()
    started = threading.Event()

    def slow(params: dict[str, Any]) -> dict[str, Any]:
        started.set()
        assert gate.wait(30)
        return {"n": params.get("n")}

    router.register("slow", slow, slow=True)
    out = Replies()
    router.handle("edge/gw/cmd/slow", b'{"n": 0}', None, None, out)
    assert started.wait(30)  # the worker holds the first one
    for i in range(1, MAX_PENDING + 2):
        router.handle("edge/gw/cmd/slow", json.dumps({"n": i}).encode(), "r/t", b"c", out)
    busy = out.wait(1)  # answered at once, while the others wait
    assert busy[0]["ok"] is False
    assert busy[0]["error"].startswith("busy")
    gate.set()
    done = out.wait(MAX_PENDING + 2)
    assert sorted(r["result"]["n"] for r in done if r["ok"]) == list(range(MAX_PENDING + 1))


def test_a_multipart_result_is_several_replies_with_the_same_correlation() -> None:
    router = CommandRouter(DeviceTopics("edge", "gw"))
    router.register("parts", lambda p: MultiPart([{"chunk": 0}, {"chunk": 1}]))
    out = Replies()
    router.handle("edge/gw/cmd/parts", b"", "ops/r", b"xyz", out)
    assert [json.loads(r.payload)["result"]["chunk"] for r in out.items] == [0, 1]
    assert {(r.topic, r.correlation) for r in out.items} == {("ops/r", b"xyz")}


def test_log_ring_keeps_the_last_lines_bounded_in_count_length_and_bytes() -> None:
    ring = LogRing(capacity=5)
    log = logging.getLogger("test.fleet.ring")
    log.addHandler(ring)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        for i in range(8):
            log.info("line %d", i)
        log.info("x" * 5000)
    finally:
        log.removeHandler(ring)
    lines, cut = ring.last(100, 1_000_000)
    assert len(lines) == 5
    assert not cut
    assert "line 4" in lines[0]
    assert len(lines[-1]) == MAX_LINE_CHARS
    small, cut = ring.last(100, 100)
    assert cut
    assert sum(len(x) + 1 for x in small) <= 100


def test_support_bundle_redacts_secrets_stays_bounded_and_chunks_join_back() -> None:
    cfg = parse_config({"device_id": "gw", "mqtt": {"username": "gw", "password_file": "/etc/pw"}})
    doc = sb.redact({"cfg": cfg, "api_token": "abc", "empty_password": ""})
    assert doc["cfg"]["mqtt"]["password_file"] == sb.REDACTED
    assert doc["cfg"]["mqtt"]["username"] == "gw"
    assert doc["api_token"] == sb.REDACTED
    assert doc["empty_password"] == ""
    # incompressible logs beyond the bound: the oldest lines go, the bundle fits
    noise = [base64.b64encode(os.urandom(1500)).decode() for _ in range(600)]
    data, kept = sb.bundle_bytes(cfg, {"v": 1}, noise, sb.versions())
    assert len(data) <= sb.MAX_BUNDLE_BYTES
    assert 0 < kept < len(noise)
    parts = sb.chunks(data, 4096, kept)
    assert len(parts) == -(-len(data) // 4096)
    joined = b"".join(base64.b64decode(p["data"]) for p in parts)
    assert hashlib.sha256(joined).hexdigest() == parts[0]["sha256"]
    bundle = json.loads(gzip.decompress(joined))
    assert bundle["logs"] == noise[-kept:]
    assert bundle["config"]["mqtt"]["password_file"] == sb.REDACTED
    with pytest.raises(EdgeAgentError, match="chunk_bytes"):
        sb.chunks(data, 10, kept)
