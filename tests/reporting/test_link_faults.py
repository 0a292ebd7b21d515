"""The link and the drain under faults: a broker that accepts but never acknowledges, a
link that stays down, a Last Will that cannot be built, deletes on a locked outbox."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.reporting import Reporter
from edge_agent.reporting.drain import IDLE_POLL_S
from edge_agent.reporting.link import MqttLink
from edge_agent.reporting.outbox import OUTBOX_FILE
from edge_agent.reporting.topics import Topic
from tests.mosquitto import Broker, free_port
from tests.reporting.helpers import event_seqs, make_config, wait_until
from tests.subscriber import Subscriber


class SilentBroker:
    """A plain TCP server speaking just enough MQTT (3.1.1 and 5) to accept a client:
    CONNACK, SUBACK and PINGRESP, but never a PUBACK."""

    def __init__(self) -> None:
        self.port = free_port()
        self.connects = 0
        self.publishes = 0
        self.seen: list[tuple[int, str, bytes]] = []  # (connection number, topic, payload)
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._srv.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def _packet(self, conn: socket.socket) -> tuple[int, bytes]:
        head = self._read(conn, 1)[0]
        length, mult = 0, 1
        while True:
            b = self._read(conn, 1)[0]
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return head >> 4, self._read(conn, length)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        v5 = False
        with conn:
            while not self._stop.is_set():
                try:
                    kind, body = self._packet(conn)
                except TimeoutError:
                    continue
                except (ConnectionError, OSError):
                    return
                if kind == 1:  # CONNECT: protocol level after the "MQTT" name
                    v5 = body[6] == 5
                    with self._lock:
                        self.connects += 1
                        number = self.connects
                    conn.sendall(b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00")
                elif kind == 8:  # SUBSCRIBE: grant QoS 1
                    pid = body[:2]
                    conn.sendall(
                        b"\x90\x04" + pid + b"\x00\x01" if v5 else b"\x90\x03" + pid + b"\x01"
                    )
                elif kind == 12:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
                elif kind == 3:  # PUBLISH: swallowed, never acknowledged
                    with self._lock:
                        self.publishes += 1
                        self.seen.append((number, *_topic_and_payload(body, v5)))
                elif kind == 14:  # DISCONNECT
                    return

    def close(self) -> None:
        self._stop.set()
        self._srv.close()
        for t in self._threads:
            t.join(2)


def _topic_and_payload(body: bytes, v5: bool) -> tuple[str, bytes]:
    """Of a QoS 1 PUBLISH's body (topic, packet id, [properties], payload)."""
    n = int.from_bytes(body[:2], "big")
    at = 2 + n + 2
    if v5:  # properties: a variable-length size, then that many bytes
        size, mult = 0, 1
        while True:
            b = body[at]
            at += 1
            size += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        at += size
    return body[2 : 2 + n].decode(), body[at:]


def _cfg(port: int, **mqtt: object) -> dict[str, object]:
    return {
        "device_id": "gw-ack",
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.3,
            "keepalive_s": 5,
            **mqtt,
        },
    }


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_that_never_acknowledges_is_detected_within_the_ack_timeout(
    tmp_path: Path, protocol: str
) -> None:
    fake = SilentBroker()
    timeout_s = 2.0
    r = Reporter(
        parse_config(_cfg(fake.port, ack_timeout_s=timeout_s, protocol=protocol)),
        tmp_path,
        birth=dict,
    )
    r.start()
    try:
        assert wait_until(lambda: r.snapshot()["mqtt"]["connected"], timeout=30)
        t0 = time.monotonic()
        r.publish_event({"event": "start", "stream": "s1"})
        assert wait_until(lambda: r.snapshot()["mqtt"]["ack_timeouts"] >= 1, timeout=60)
        took = time.monotonic() - t0
        # the ack timeout, plus at most one drain poll, plus slack for a loaded machine
        assert took < timeout_s + IDLE_POLL_S + 5.0, took
        snap = r.snapshot()
        assert "acknowledged none" in (snap["mqtt"]["last_error"] or "")
        assert wait_until(lambda: fake.connects >= 2, timeout=30)  # it reconnected
        # nothing was given up: the records wait in the outbox for a real PUBACK
        assert r.snapshot()["outbox"]["depth"] >= 1
    finally:
        r.stop(timeout=1.0)
        fake.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_superseded_birth_is_not_sent_again_after_a_reconnect(
    tmp_path: Path, protocol: str
) -> None:
    # The status topic is retained: only the newest birth matters. Births handed to the
    # link and never acknowledged must not be re-sent next to the one a reconnect queues
    # (where the broker refuses their size, each would cost a dropped connection).
    fake = SilentBroker()
    r = Reporter(
        parse_config(_cfg(fake.port, ack_timeout_s=2.0, protocol=protocol)), tmp_path, birth=dict
    )

    def births(conn: int) -> list[int]:
        with fake._lock:
            seen = list(fake.seen)
        return [json.loads(p)["seq"] for c, t, p in seen if c == conn and t.endswith("/status")]

    r.start()
    try:
        assert wait_until(lambda: len(births(1)) == 1, timeout=30)
        second = r.publish_birth()  # e.g. the serving models changed
        assert wait_until(lambda: second in births(1), timeout=30)
        # no PUBACK ever comes: the ack timeout reconnects, which queues a third birth;
        # the next ack timeout ends connection 2, after everything it carried was written
        assert wait_until(lambda: fake.connects >= 3, timeout=60)
        again = births(2)
        assert len(again) == 1, again
        assert again[0] > second
    finally:
        r.stop(timeout=1.0)
        fake.close()


def test_not_connected_since_does_not_restart_at_every_failed_attempt(tmp_path: Path) -> None:
    r = Reporter(parse_config(_cfg(free_port())), tmp_path, birth=dict)  # nothing listens
    r.start()
    try:
        assert wait_until(lambda: r.snapshot()["mqtt"]["last_error"] is not None)
        since = r.snapshot()["mqtt"]["since"]
        assert since is not None
        errors = {r.snapshot()["mqtt"]["last_error"]}
        deadline = time.monotonic() + 2.0  # many attempts at 0.05-0.3 s backoff
        while time.monotonic() < deadline:
            assert r.snapshot()["mqtt"]["since"] == since
            errors.add(r.snapshot()["mqtt"]["last_error"])
            time.sleep(0.05)
        assert time.time() - since >= 2.0
    finally:
        r.stop(timeout=1.0)


def test_a_last_will_that_cannot_be_built_does_not_end_the_link(broker: Broker) -> None:
    calls = {"n": 0}

    def will() -> tuple[Topic, bytes]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("seq allocation failed")
        return Topic("edge/gw-will/status"), b"{}"

    cfg = parse_config(_cfg(broker.port)).mqtt
    link = MqttLink(
        cfg,
        client_id="gw-will",
        will=will,
        on_connected=lambda _present: None,
        on_message=lambda _msg: None,
    )
    link.start()
    try:
        assert wait_until(lambda: link.connected, timeout=30)
        assert calls["n"] >= 2
    finally:
        link.stop(timeout=2.0)


def test_drain_survives_a_locked_outbox_and_sends_each_record_once(
    tmp_path: Path, broker: Broker
) -> None:
    sub = Subscriber(broker.host, broker.port, "edge/gw-01/events", client_id="drain-sub")
    r = Reporter(make_config(broker), tmp_path, birth=dict)
    r.start()
    try:
        assert wait_until(lambda: r.snapshot()["mqtt"]["connected"], timeout=30)
        locker = sqlite3.connect(tmp_path / OUTBOX_FILE, isolation_level=None, timeout=10)
        sent = [r.publish_event({"event": "start", "stream": "s1", "i": i}) for i in range(20)]
        locker.execute("BEGIN IMMEDIATE")  # acknowledged records cannot be deleted now
        try:
            sent += [r.publish_event({"event": "end", "stream": "s1", "i": i}) for i in range(10)]
            assert wait_until(lambda: set(sent[:20]) <= set(event_seqs(sub.messages)), 30)
            time.sleep(1.5)  # let the drain fail a few deletes
        finally:
            locker.execute("COMMIT")
            locker.close()
        assert wait_until(lambda: set(sent) <= set(event_seqs(sub.messages)), timeout=30)
        assert wait_until(lambda: r.snapshot()["outbox"]["depth"] == 0, timeout=30)
        got = event_seqs(sub.messages)
        assert sorted(got) == sorted(set(got)), "a record was sent twice"
    finally:
        r.stop(timeout=2.0)
        sub.close()
