"""Records the writer made durable are offered from the writer's own thread while the
drain is idle (one thread hand-over less per event, issue 15), with the drain's order
and bookkeeping; a failure there costs the writer nothing and loses no record.

Real mosquitto, real outbox on disk, the reporter's own Drainer and MqttLink; the link's
publish is wrapped only to note which thread called it (and, in the fault test, to fail
once the way a bug would).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edge_agent.reporting.drain import Drainer
from edge_agent.reporting.link import MqttLink
from edge_agent.reporting.outbox import Kind, Outbox
from tests.mosquitto import Broker
from tests.reporting.helpers import bare_link, wait_until
from tests.subscriber import Subscriber

TOPIC = "edge/d/events"


class _Parts:
    def __init__(self, outbox: Outbox, link: MqttLink, drain: Drainer) -> None:
        self.outbox, self.link, self.drain = outbox, link, drain
        self.callers: list[tuple[str, int]] = []  # (thread name, seq) per publish


@pytest.fixture
def parts(broker: Broker, tmp_path: Path) -> Iterator[_Parts]:
    outbox = Outbox(tmp_path / "state", max_bytes=1 << 20, sync="always", now=time.time())
    link = bare_link(broker, "drain-on-writer")
    drain = Drainer(outbox, link, window=8)
    p = _Parts(outbox, link, drain)
    publish = link.publish

    def noted(topic: str, payload: bytes, **kw: Any) -> int:
        p.callers.append((threading.current_thread().name, json.loads(payload)["seq"]))
        return publish(topic, payload, **kw)

    link.publish = noted  # type: ignore[method-assign]
    drain.start()
    link.start()
    try:
        assert wait_until(lambda: link.connected)
        yield p
    finally:
        drain.stop()
        link.stop()
        outbox.close()


def _append(outbox: Outbox) -> int:
    return outbox.append(
        Kind.EVENT,
        TOPIC,
        lambda seq: json.dumps({"seq": seq}).encode(),
        now=time.time(),
        wait=False,
    )


@contextmanager
def _subscriber(broker: Broker) -> Iterator[Subscriber]:
    sub = Subscriber(broker.host, broker.port, TOPIC, client_id="drain-on-writer-sub")
    try:
        yield sub
    finally:
        sub.close()


def _delivered(sub: Subscriber) -> list[int]:
    return [json.loads(m.payload)["seq"] for m in sub.messages if m.topic == TOPIC]


def _send_one_by_one(p: _Parts, sub: Subscriber, n: int) -> list[int]:
    """n records, each appended once the one before was delivered and deleted (the
    drain idle again)."""
    seqs = []
    for _ in range(n):
        seq = _append(p.outbox)
        seqs.append(seq)
        assert wait_until(lambda: seq in _delivered(sub))  # noqa: B023 - waited for here
        assert wait_until(lambda: p.outbox.stats().depth == 0)
    return seqs


def test_a_durable_record_is_published_by_the_writer_while_the_drain_is_idle(
    parts: _Parts, broker: Broker
) -> None:
    with _subscriber(broker) as sub:
        seqs = _send_one_by_one(parts, sub, 6)
        assert _delivered(sub) == seqs  # each once, in order
    by_writer = [s for name, s in parts.callers if name == "outbox-writer"]
    # the drain may have been finishing a step (an ack) when a group became durable:
    # then its own thread sends; with the drain idle between records, the writer does
    assert by_writer, parts.callers
    assert sorted(s for _, s in parts.callers) == seqs  # nobody sent one twice


def test_a_failure_on_the_writers_path_loses_nothing_and_the_drain_sends_it(
    parts: _Parts, broker: Broker
) -> None:
    publish = parts.link.publish
    failed: list[str] = []

    def fails_once_on_the_writer(topic: str, payload: bytes, **kw: Any) -> int:
        if not failed and threading.current_thread().name == "outbox-writer":
            failed.append(topic)
            raise RuntimeError("a bug on the writer's path")
        return publish(topic, payload, **kw)

    parts.link.publish = fails_once_on_the_writer  # type: ignore[method-assign]
    with _subscriber(broker) as sub:
        seqs = _send_one_by_one(parts, sub, 6)
        assert failed  # the writer did try one of them
        assert _delivered(sub) == seqs
    assert parts.outbox.writer_alive  # the writer stored every record after the failure


def test_a_drain_that_is_backing_off_keeps_the_sending_to_itself(
    parts: _Parts, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its deletes fail (the database busy for them), so its steps fail and it backs off
    delete: Callable[..., int] = parts.outbox.delete
    broken = threading.Event()
    broken.set()

    def busy_delete(ids: Any) -> int:
        if broken.is_set():
            from edge_agent.errors import OutboxError

            raise OutboxError("database is locked (test)")
        return delete(ids)

    monkeypatch.setattr(parts.outbox, "delete", busy_delete)
    with _subscriber(broker) as sub:
        first = _append(parts.outbox)
        assert wait_until(lambda: first in _delivered(sub))
        assert wait_until(lambda: parts.drain._backing_off)  # its delete failed
        parts.callers.clear()
        second = _append(parts.outbox)
        assert wait_until(lambda: second in _delivered(sub), timeout=60.0)
        assert [name for name, s in parts.callers if s == second] == ["outbox-drain"]
        broken.clear()
        assert wait_until(lambda: parts.outbox.stats().depth == 0, timeout=60.0)
