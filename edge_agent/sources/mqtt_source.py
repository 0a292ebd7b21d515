"""Sensors fed through a local broker (PLC bridges, Node-RED, other gateways).

paho runs its network loop in its own thread; messages land in a bounded queue
(oldest dropped and counted when the pipeline falls behind) and `read()` turns
whatever arrived into one Block. A lost broker connection is reported as
SourceDisconnectedError, so the runner shows `reconnecting` and reconnects with
backoff. Malformed messages are counted (see mqtt_payload.py), never raised.

Each sample's time is its message's `t` (spaced at `rate_hz` within a message), else
its arrival time. Holes: messages dropped by the full queue, and a step between two
messages' own `t` of more than 1.5 sample periods (or back in time), cut the data into
blocks, the one after the hole marked `gap_before`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_agent.errors import SourceDisconnectedError, SourceError
from edge_agent.schema import check
from edge_agent.sources.base import Block, Source
from edge_agent.sources.mqtt_payload import Decoded, decode_binary, decode_json
from edge_agent.sources.rate import RateMeter

__all__ = ["MqttSource", "Options"]

log = logging.getLogger(__name__)

GAP_PERIODS = 1.5  # a step between messages' own times longer than this is a hole


@dataclass(frozen=True)
class Options:
    topic: str = field(metadata=check("nonempty"))
    # empty: the model card's channel names (filled in when the stream is built)
    channels: tuple[str, ...] = ()
    format: Literal["json", "binary"] = "json"
    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=check("port"))
    qos: Literal[0, 1] = 0
    client_id: str = ""
    username: str = ""
    password_file: str = ""
    keepalive_s: int = field(default=30, metadata=check("positive"))
    connect_timeout_s: float = field(default=5.0, metadata=check("positive"))
    rate_hz: float = field(default=100.0, metadata=check("positive"))
    int16_scale: float = field(default=1.0, metadata=check("positive"))
    max_message_bytes: int = field(default=64 * 1024, metadata=check("positive"))
    queue_messages: int = field(default=1024, metadata=check("positive"))
    rate_window_s: float = field(default=10.0, metadata=check("positive"))

    def __post_init__(self) -> None:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels: duplicate names in {list(self.channels)}")
        hashes = self.topic.count("#")
        if hashes and (hashes > 1 or not (self.topic == "#" or self.topic.endswith("/#"))):
            raise ValueError(f"topic: '#' only as the last level, got {self.topic!r}")


class MqttSource(Source):
    kind = "mqtt"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self._client: Any = None
        self._cv = threading.Condition()
        self._msgs: collections.deque[tuple[bytes, float]] = collections.deque()
        self._connected = False
        self._subscribed = False
        self._refused = ""
        self._next = 0
        self._meter = RateMeter(options.rate_window_s)
        self._dropped = False  # a message was dropped since the last read: a hole
        self._pending: collections.deque[Block] = collections.deque()
        self._last_t: float | None = None  # own time of the last sample, if it had one

    @property
    def measured_rate_hz(self) -> float:
        return self._meter.rate_hz

    def open(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        o: Options = self.options
        cid = o.client_id or f"edge-src-{self.name}-{uuid.uuid4().hex[:8]}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)
        if o.username:
            client.username_pw_set(o.username, self._password())
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._connected = self._subscribed = False
        self._refused = ""
        try:
            client.connect(o.host, o.port, keepalive=o.keepalive_s)
        except (OSError, ValueError) as e:
            raise SourceDisconnectedError(f"broker {o.host}:{o.port}: {e}") from e
        client.loop_start()
        self._client = client
        deadline = time.monotonic() + o.connect_timeout_s
        with self._cv:
            while not self._subscribed and not self._refused:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
        if self._refused:
            self.close()
            raise SourceError(f"broker {o.host}:{o.port}: {self._refused}")
        if not self._subscribed:
            self.close()
            raise SourceDisconnectedError(f"broker {o.host}:{o.port}: no CONNACK/SUBACK in time")
        self._meter.reset()
        self._pending.clear()
        self._last_t = None
        log.info("source %s: subscribed to %s on %s:%d", self.name, o.topic, o.host, o.port)

    def _password(self) -> str:
        path = self.options.password_file
        if not path:
            return ""
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            raise SourceError(f"mqtt source password_file {path}: {e}") from e

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        with self._cv:
            self._msgs.clear()

    # paho callbacks (its network thread)
    def _on_connect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            with self._cv:
                self._refused = f"connection refused: {rc}"
                self._cv.notify_all()
            return
        self._connected = True
        client.subscribe(self.options.topic, qos=self.options.qos)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: list[Any], _p: Any) -> None:
        with self._cv:
            if any(rc.is_failure for rc in rcs):
                self._refused = f"subscription to {self.options.topic} refused: {rcs[0]}"
            else:
                self._subscribed = True
            self._cv.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        with self._cv:
            if self._connected:
                self.count("disconnects")
            self._connected = False
            self._cv.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        payload: bytes = msg.payload
        if len(payload) > self.options.max_message_bytes:
            self.count("oversized_messages")
            return
        with self._cv:
            if len(self._msgs) >= self.options.queue_messages:
                self._msgs.popleft()
                self.count("dropped_messages")
                self._dropped = True
            self._msgs.append((payload, time.time()))
            self._cv.notify()

    def read(self, timeout: float) -> Block | None:
        if self._pending:
            return self._pending.popleft()
        deadline = time.monotonic() + timeout
        while True:
            with self._cv:
                while not self._msgs and self._connected:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._cv.wait(left)
                if not self._msgs:
                    raise SourceDisconnectedError(
                        f"broker {self.options.host}:{self.options.port}: connection lost"
                    )
                batch = list(self._msgs)
                self._msgs.clear()
                dropped, self._dropped = self._dropped, False
            self._decode(batch, dropped)
            if self._pending:
                return self._pending.popleft()
            if time.monotonic() >= deadline:
                return None

    def _decode(self, batch: list[tuple[bytes, float]], dropped: bool) -> None:
        """Queue the batch's samples as blocks with their times, cut at holes."""
        o: Options = self.options
        step = 1.0 / o.rate_hz
        # (samples, times, a hole before them)
        parts: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], bool]] = []
        hole = dropped
        for payload, arrived in batch:
            d: Decoded = (
                decode_json(payload, o.channels)
                if o.format == "json"
                else decode_binary(payload, len(o.channels), o.int16_scale)
            )
            for what, k in d.errors.items():
                self.count(what, k)
            k = len(d.samples)
            if not k:
                continue
            self.count("messages")
            first = d.t if d.t is not None else arrived - (k - 1) * step
            times = first + step * np.arange(k, dtype=np.float64)
            if d.t is not None:
                last, self._last_t = self._last_t, float(times[-1])
                if last is not None and not 0 < d.t - last <= GAP_PERIODS * step:
                    hole = True
                    self.count("time_gaps")
            else:
                self._last_t = None
                self.note_clock(k)  # stamped on arrival by this gateway's clock
            parts.append((d.samples, times, hole))
            hole = False
        if not parts:
            return
        self._meter.add(time.monotonic(), sum(len(p[0]) for p in parts))
        # one block per run of parts without a hole between them
        runs = itertools.accumulate(int(p[2]) for p in parts)
        for _, group in itertools.groupby(zip(runs, parts, strict=True), key=lambda x: x[0]):
            items = [p for _, p in group]
            samples = np.concatenate([p[0] for p in items]) if len(items) > 1 else items[0][0]
            times = np.concatenate([p[1] for p in items]) if len(items) > 1 else items[0][1]
            gap = items[0][2]
            blk = Block(samples, float(times[0]), self._next, float(o.rate_hz), gap, times)
            self._pending.append(blk)
            self._next += len(samples)


SOURCE_CLASS = MqttSource
