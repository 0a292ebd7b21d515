"""A real MQTT subscriber for tests: records every message, waits with timeouts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Properties | None
    t: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Persistent-session QoS 1 subscriber that reconnects quickly after a broker restart."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        *,
        client_id: str = "test-subscriber",
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._topic = topic
        self._subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if username:
            c.username_pw_set(username, password)
        if tls_ca:
            c.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key)
        c.reconnect_delay_set(0.05, 0.3)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._subscribed.set()
        self.client = c
        props = Properties(paho.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect(host, port, keepalive=5, clean_start=False, properties=props)
        c.loop_start()
        assert self._subscribed.wait(10), "subscriber could not subscribe"

    def _on_connect(self, client: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(self._topic, qos=1)

    def _on_message(self, client: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
        rec = Received(
            msg.topic,
            bytes(msg.payload),
            bool(msg.retain),
            getattr(msg, "properties", None),
            time.time(),
        )
        with self._cond:
            self.messages.append(rec)
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[Received]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def on(self, topic_suffix: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(topic_suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
