"""Incoming commands on `<prefix>/<device>/cmd/<name>`: a registry of handlers by name.

A request is an empty payload or a JSON object. The reply goes to the MQTT 5 response
topic with the request's correlation data, or (3.1.1, or no response topic given) to
`<prefix>/<device>/cmd/<name>/reply`. An unknown command or a malformed request gets
an error reply, and no handler runs. Handlers run on the MQTT network thread: keep
them short (hand long work to another thread and reply that it started).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import EdgeAgentError, PublishError
from edge_agent.reporting.payloads import command_reply, decode_command, encode
from edge_agent.reporting.topics import DeviceTopics, Topic

__all__ = ["CommandHandler", "CommandRouter", "Reply"]

log = logging.getLogger(__name__)

CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Reply:
    topic: str
    payload: bytes
    correlation: bytes | None


class CommandRouter:
    def __init__(self, topics: DeviceTopics) -> None:
        self._topics = topics
        self._handlers: dict[str, CommandHandler] = {}
        self._lock = threading.Lock()

    def register(self, name: str, handler: CommandHandler) -> None:
        self._topics.command(name)  # validates the name as one topic level
        with self._lock:
            self._handlers[name] = handler

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._handlers)

    def dispatch(
        self,
        topic: str,
        payload: bytes,
        response_topic: str | None,
        correlation: bytes | None,
        *,
        now: float,
    ) -> Reply | None:
        """Run the handler for one request and build its reply (None: not a command topic)."""
        name = self._topics.command_name(topic)
        if name is None:
            return None
        reply_to = self._reply_topic(name, response_topic)
        if reply_to is None:
            return None
        device = self._topics.device
        with self._lock:
            handler = self._handlers.get(name)
        if handler is None:
            log.warning("command %r: unknown (known: %s)", name, ", ".join(self.names()))
            body = command_reply(
                device, now, name, error=f"unknown command {name!r}; known: {self.names()}"
            )
            return Reply(reply_to, encode(body), correlation)
        try:
            params = decode_command(payload)
        except PublishError as e:
            log.warning("command %r: malformed request: %s", name, e)
            return Reply(
                reply_to, encode(command_reply(device, now, name, error=str(e))), correlation
            )
        try:
            result = handler(params)
            body = command_reply(device, now, name, result=result)
            data = encode(body)
        except EdgeAgentError as e:
            log.warning("command %r failed: %s", name, e)
            data = encode(command_reply(device, now, name, error=str(e)))
        except Exception as e:  # a buggy handler answers, it does not crash MQTT
            log.exception("command %r: handler raised", name)
            data = encode(command_reply(device, now, name, error=f"internal error: {e}"))
        return Reply(reply_to, data, correlation)

    def _reply_topic(self, name: str, response_topic: str | None) -> str | None:
        if response_topic is None:
            return self._topics.command_reply(name).value
        try:
            return Topic(response_topic).value
        except EdgeAgentError:
            log.warning("command %r: invalid response topic %r; not answered", name, response_topic)
            return None
