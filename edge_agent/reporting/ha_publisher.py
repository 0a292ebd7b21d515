"""Publishes Home Assistant discovery and the per-stream score state (docs/homeassistant.md).

Discovery configs (reporting/ha_discovery.py) go out retained when the agent starts and
again whenever Home Assistant announces itself online on `<discovery_prefix>/status`
(its birth message after a restart, which may have lost what it knew): the MQTT thread
only notes the birth, the next status tick sends the configs, so a flood of births costs
at most one set per tick and no disk write happens on the MQTT thread. Each stream's
`{"score", "threshold"}` goes to its retained `<base>/ha/<stream>` topic from the status
snapshot the agent writes every tick: at once when the threshold changes or the first
time, otherwise at most every `state_interval_s`, so an SD card's outbox is not written
every second for a dashboard. Everything is appended to the outbox (durable, in order)
and never raises into the caller's loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from edge_agent.reporting.ha_discovery import discovery_messages, ha_state_body, ha_state_topic

__all__ = ["HaSink", "HomeAssistantPublisher"]

log = logging.getLogger(__name__)


class HaSink(Protocol):
    """What the publisher needs of the reporter."""

    def publish_raw(self, topic: str, payload: bytes, *, periodic: bool = False) -> int: ...
    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None: ...


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


class HomeAssistantPublisher:
    def __init__(
        self,
        sink: HaSink,
        *,
        discovery_prefix: str,
        base: str,
        device: str,
        streams: Sequence[str],
        version: str,
        state_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._prefix = discovery_prefix
        self._base = base
        self._messages = discovery_messages(discovery_prefix, base, device, streams, version)
        self._interval = state_interval_s
        self._clock = clock
        self._lock = threading.Lock()  # status ticks and the MQTT thread both publish
        self._sent: dict[str, tuple[dict[str, Any], float]] = {}
        self._ha_born = threading.Event()  # set on the MQTT thread, acted on at the tick
        self.discovery_sent = 0  # times the whole set went out (start + each HA birth)

    @property
    def status_topic(self) -> str:
        return f"{self._prefix}/status"

    def attach(self) -> None:
        """Subscribe to Home Assistant's status and queue the discovery configs. Call
        before the reporter starts (subscriptions are made on connect)."""
        self._sink.subscribe(self.status_topic, self._on_ha_status)
        self.publish_discovery()

    def publish_discovery(self) -> None:
        with self._lock:
            for topic, payload in self._messages:
                self._sink.publish_raw(topic, _encode(payload))
            self.discovery_sent += 1
            # Home Assistant restarted: give it the current state too, not in 30 s.
            self._sent.clear()

    def _on_ha_status(self, topic: str, payload: bytes) -> None:
        # "online" is Home Assistant's default birth payload; "offline" its will.
        if payload.strip().lower() == b"online":
            self._ha_born.set()

    def on_status(self, snap: Mapping[str, Any]) -> None:
        """The agent's status snapshot (each tick). Never raises."""
        try:
            self._on_status(snap)
        except Exception:  # a dashboard must never stop the agent's tick
            log.exception("Home Assistant state not published")

    def _on_status(self, snap: Mapping[str, Any]) -> None:
        if self._ha_born.is_set():
            self._ha_born.clear()
            log.info("Home Assistant is online: discovery sent again")
            self.publish_discovery()
        streams = snap.get("streams")
        if not isinstance(streams, list):
            return
        now = self._clock()
        with self._lock:
            for s in streams:
                if not isinstance(s, Mapping) or not isinstance(s.get("name"), str):
                    continue
                name = s["name"]
                body = ha_state_body(s)
                last = self._sent.get(name)
                due = (
                    last is None
                    or body["threshold"] != last[0]["threshold"]
                    or (body != last[0] and now - last[1] >= self._interval)
                )
                if not due:
                    continue
                topic = ha_state_topic(self._base, name)
                if self._sink.publish_raw(topic, _encode(body), periodic=True) >= 0:
                    self._sent[name] = (body, now)
