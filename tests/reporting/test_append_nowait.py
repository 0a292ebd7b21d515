"""A stream's event never waits for a disk (issue 15): `append(wait=False)` returns once
queued, the record is still durable before the drain may offer it, and the relay's path
on the scoring thread calls no fsync and waits on no condition.

A second sqlite3 connection holding the write lock stands in for a disk that cannot take
the group commit yet; a Python profiler on the calling thread sees every call it makes.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from edge_agent.config import parse_config
from edge_agent.pipeline.alarms import Transition
from edge_agent.pipeline.stream import AnomalyEvent
from edge_agent.reporting import Reporter
from edge_agent.reporting.history import EventHistory, read_history
from edge_agent.reporting.outbox import OUTBOX_FILE, Kind, Outbox
from edge_agent.service.events import ErrorLog, EventRelay
from tests.mosquitto import Broker
from tests.reporting.helpers import make_config, wait_until
from tests.subscriber import Subscriber


def _lock(d: Path) -> sqlite3.Connection:
    """Another process's connection holding the write lock (BEGIN IMMEDIATE)."""
    c = sqlite3.connect(d / OUTBOX_FILE, isolation_level=None, timeout=10)
    c.execute("BEGIN IMMEDIATE")
    return c


def _stored(c: sqlite3.Connection, seq: int) -> bool:
    return bool(c.execute("SELECT COUNT(*) FROM records WHERE seq = ?", (seq,)).fetchone()[0])


def _event(i: int) -> AnomalyEvent:
    return AnomalyEvent(
        stream="pump",
        transition=Transition.START,
        window_start=i * 16,
        ts=1_000.0 + i,
        score=9.0,
        peak=9.0,
        threshold=4.0,
        model="m-int8-onnx",
        model_version=1,
        windows=1,
        started_ts=1_000.0 + i,
        window_samples=64,
    )


def test_append_without_wait_returns_before_durable_and_is_offered_only_once_durable(
    tmp_path: Path,
) -> None:
    ob = Outbox(tmp_path, max_bytes=1 << 20, sync="always", now=time.time())
    durable = threading.Event()
    ob.on_durable = durable.set
    try:
        locker = _lock(tmp_path)
        try:
            seq = ob.append(
                Kind.EVENT, "edge/d/events", lambda s: b"{}", now=time.time(), wait=False
            )
            # returned although the group it belongs to cannot be committed yet
            assert not _stored(locker, seq)
            assert seq not in [r.seq for r in ob.peek(100)]  # not offered before durable
        finally:
            locker.execute("COMMIT")
            locker.close()
        assert durable.wait(60.0)  # the writer says so when its group is durable
        assert wait_until(lambda: seq in [r.seq for r in ob.peek(100)])
    finally:
        ob.close()
    check = sqlite3.connect(tmp_path / OUTBOX_FILE)
    try:
        assert _stored(check, seq)
    finally:
        check.close()


def test_append_with_wait_still_returns_durable(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, max_bytes=1 << 20, sync="always", now=time.time())
    try:
        seq = ob.append(Kind.EVENT, "edge/d/events", lambda s: b"{}", now=time.time())
        assert seq in [r.seq for r in ob.peek(100)]  # durable the moment append returned
    finally:
        ob.close()


class _Calls:
    """Every call the profiled thread makes: Python functions and C builtins by name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            self.names.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}")
        elif event == "c_call":
            self.names.append(str(getattr(arg, "__name__", arg)))


def test_the_stream_thread_path_calls_no_fsync_and_waits_on_no_condition(
    tmp_path: Path,
) -> None:
    cfg = parse_config({"device_id": "gw-01", "mqtt": {"enabled": False}})
    reporter = Reporter(cfg, tmp_path, birth=lambda: {"profile": "test", "models": []})
    history = EventHistory(tmp_path)
    relay = EventRelay(ErrorLog(), history)
    relay.attach(reporter)
    try:
        relay.on_event(_event(0))  # starts the history's writer (Thread.start waits)
        calls = _Calls()
        sys.setprofile(calls)  # this thread only
        try:
            relay.on_event(_event(1))
        finally:
            sys.setprofile(None)
        assert "fsync" not in calls.names
        assert "threading.py:wait" not in calls.names
        assert "outbox.py:append" in calls.names  # the profiler did see the path
        assert "history.py:record" in calls.names
    finally:
        relay.close(timeout=1.0)
        history.close()
        reporter.stop()
    assert [r["t_sample"] for r in read_history(tmp_path)] == [1_000.0, 1_001.0]


@pytest.fixture
def sub(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.host, broker.port, "edge/#")
    yield s
    s.close()


@pytest.mark.broker
def test_an_event_queued_while_the_disk_is_busy_is_published_once_durable(
    broker: Broker, sub: Subscriber, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    reporter = Reporter(make_config(broker), state, birth=lambda: {"profile": "test", "models": []})
    reporter.start()
    history = EventHistory(state)
    relay = EventRelay(ErrorLog(), history)
    relay.attach(reporter)
    try:
        assert sub.wait_for(lambda m: any(x.topic.endswith("/status") for x in m), 60.0)
        locker = _lock(state)
        try:
            relay.on_event(_event(7))  # returns: nothing on this thread waits for the lock
            assert not sub.on("/events")  # not durable, so not sent
        finally:
            locker.execute("COMMIT")
            locker.close()
        assert sub.wait_for(lambda m: any(x.topic.endswith("/events") for x in m), 60.0)
        (msg,) = sub.on("/events")
        assert msg.json()["t_sample"] == 1_007.0
    finally:
        relay.close(timeout=1.0)
        history.close()
        reporter.stop()
