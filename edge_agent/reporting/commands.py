"""Incoming commands on `<prefix>/<device>/cmd/<name>`: a registry of handlers by name.

A request is an empty payload or a JSON object. The reply goes to the MQTT 5 response
topic with the request's correlation data, or (3.1.1, or no response topic given) to
`<prefix>/<device>/cmd/<name>/reply`. An unknown command or a malformed request gets
an error reply, and no handler runs. Quick handlers run on the MQTT network thread;
handlers registered `slow=True` (they wait on the agent, or build something big) run one
at a time on the router's own worker thread, with at most `MAX_PENDING` waiting: one more
is answered "busy" at once, so a flood of requests cannot pile up work on a device.
A handler may answer in several messages (`MultiPart`), each a full reply with the same
correlation data.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import EdgeAgentError, PublishError
from edge_agent.reporting.payloads import command_reply, decode_command, encode
from edge_agent.reporting.topics import DeviceTopics, Topic

__all__ = ["MAX_PENDING", "CommandHandler", "CommandRouter", "MultiPart", "Reply"]

log = logging.getLogger(__name__)

MAX_PENDING = 4  # slow commands waiting for the worker; more are refused as busy


@dataclass(frozen=True)
class MultiPart:
    """A result sent as several replies (e.g. a support bundle in chunks)."""

    parts: Sequence[dict[str, Any]]


CommandHandler = Callable[[dict[str, Any]], dict[str, Any] | MultiPart]


@dataclass(frozen=True)
class Reply:
    topic: str
    payload: bytes
    correlation: bytes | None


Send = Callable[[Reply], None]


@dataclass(frozen=True)
class _Job:
    name: str
    handler: CommandHandler
    params: dict[str, Any]
    reply_to: str
    correlation: bytes | None
    send: Send


class CommandRouter:
    def __init__(self, topics: DeviceTopics, clock: Callable[[], float] = time.time) -> None:
        self._topics = topics
        self._clock = clock
        self._handlers: dict[str, tuple[CommandHandler, bool]] = {}
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job] = queue.Queue(MAX_PENDING)
        self._worker: threading.Thread | None = None

    def register(self, name: str, handler: CommandHandler, *, slow: bool = False) -> None:
        self._topics.command(name)  # validates the name as one topic level
        with self._lock:
            self._handlers[name] = (handler, slow)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._handlers)

    def handle(
        self,
        topic: str,
        payload: bytes,
        response_topic: str | None,
        correlation: bytes | None,
        send: Send,
    ) -> bool:
        """Answer one request through `send` (now, or from the worker for slow commands).
        False: `topic` is not one of this device's command topics."""
        name = self._topics.command_name(topic)
        if name is None:
            return False
        reply_to = self._reply_topic(name, response_topic)
        if reply_to is not None:
            self._start(name, payload, reply_to, correlation, send)
        return True

    def _start(
        self, name: str, payload: bytes, reply_to: str, correlation: bytes | None, send: Send
    ) -> None:
        with self._lock:
            entry = self._handlers.get(name)
        error = ""
        if entry is None:
            log.warning("command %r: unknown (known: %s)", name, ", ".join(self.names()))
            error = f"unknown command {name!r}; known: {self.names()}"
        else:
            try:
                params = decode_command(payload)
            except PublishError as e:
                log.warning("command %r: malformed request: %s", name, e)
                error = str(e)
        if entry is None or error:
            send(self._error(name, error, reply_to, correlation))
            return
        handler, slow = entry
        job = _Job(name, handler, params, reply_to, correlation, send)
        if not slow:
            self._run(job)
            return
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            err = f"busy: {MAX_PENDING} slow commands are waiting; try again later"
            send(self._error(name, err, reply_to, correlation))
            return
        self._ensure_worker()

    def _error(self, name: str, error: str, reply_to: str, corr: bytes | None) -> Reply:
        body = command_reply(self._topics.device, self._clock(), name, error=error)
        return Reply(reply_to, encode(body), corr)

    def _run(self, job: _Job) -> None:
        device, name = self._topics.device, job.name
        try:
            result = job.handler(job.params)
            parts = list(result.parts) if isinstance(result, MultiPart) else [result]
            datas = [encode(command_reply(device, self._clock(), name, result=p)) for p in parts]
        except EdgeAgentError as e:
            log.warning("command %r failed: %s", name, e)
            datas = [encode(command_reply(device, self._clock(), name, error=str(e)))]
        except Exception as e:  # a buggy handler answers, it does not crash MQTT
            log.exception("command %r: handler raised", name)
            err = f"internal error: {e}"
            datas = [encode(command_reply(device, self._clock(), name, error=err))]
        for data in datas:
            try:
                job.send(Reply(job.reply_to, data, job.correlation))
            except Exception:  # a reply that cannot go is logged, not fatal
                log.exception("command %r: reply not sent", name)

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                return
            self._worker = threading.Thread(target=self._work, name="commands", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            self._run(self._jobs.get())

    def _reply_topic(self, name: str, response_topic: str | None) -> str | None:
        if response_topic is None:
            return self._topics.command_reply(name).value
        try:
            return Topic(response_topic).value
        except EdgeAgentError:
            log.warning("command %r: invalid response topic %r; not answered", name, response_topic)
            return None
