"""The facade the agent uses: durable publish calls, commands, and a status snapshot.

Every publish_* call stores its record in the outbox (durably, before it returns) and
wakes the drain; nothing here blocks on the network. With `mqtt.enabled = false`
the outbox still records (bounded by its budget) and nothing is sent.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.errors import EdgeAgentError, PublishError
from edge_agent.reporting.commands import CommandHandler, CommandRouter, Reply
from edge_agent.reporting.outbox import Kind, Outbox
from edge_agent.reporting.outbox_health import outbox_health
from edge_agent.reporting.payloads import encode, envelope, status_offline, status_online
from edge_agent.reporting.topics import DeviceTopics, Topic

# The MQTT side (paho, and with it ssl, urllib.request and email: ~8 MB resident) is
# imported only when `mqtt.enabled`; without it the outbox records and nothing is sent.
if TYPE_CHECKING:
    from edge_agent.reporting.drain import Drainer
    from edge_agent.reporting.link import Incoming, MqttLink

__all__ = ["Reporter"]

log = logging.getLogger(__name__)

# How often stop() looks whether the clean "offline" status was acknowledged.
_STOP_POLL_S = 0.02


class CommandParamsError(EdgeAgentError):
    """A command got parameters it does not take: an error reply, nothing done."""


def _no_params(params: Mapping[str, Any]) -> None:
    """`ping` and `rebirth` take none: refused like any command's unknown parameters
    (docs/fleet.md), so a typo is not silently ignored."""
    if params:
        raise CommandParamsError(f"unknown parameter(s) {sorted(params)}; accepted: []")


class Reporter:
    def __init__(
        self,
        cfg: AgentConfig,
        state_dir: Path,
        birth: Callable[[], dict[str, Any]],
    ) -> None:
        self._cfg = cfg
        self._device = cfg.device_id
        self._birth = birth
        self._topics = DeviceTopics(cfg.mqtt.prefix, cfg.device_id)
        self._started_at = time.time()
        self._outbox = Outbox(
            Path(state_dir),
            max_bytes=cfg.outbox.max_bytes,
            sync=cfg.outbox.sync,
            now=self._started_at,
        )
        self._router = CommandRouter(self._topics)
        self._router.register("ping", self._cmd_ping)
        self._router.register("rebirth", self._cmd_rebirth)
        self._extra: list[tuple[str, Callable[[str, bytes], None]]] = []
        self._connect_listeners: list[Callable[[bool], None]] = []
        self._link: MqttLink | None = None
        self._drain: Drainer | None = None
        if cfg.mqtt.enabled:
            from edge_agent.reporting.drain import Drainer
            from edge_agent.reporting.link import MqttLink

            self._link = MqttLink(
                cfg.mqtt,
                client_id=cfg.mqtt.client_id or f"edge-agent-{cfg.device_id}",
                will=self._will,
                on_connected=self._on_connected,
                on_message=self._on_message,
                subscriptions=(self._topics.commands_filter,),
            )
            self._drain = Drainer(
                self._outbox,
                self._link,
                window=cfg.mqtt.max_inflight,
                ack_timeout_s=cfg.mqtt.ack_timeout_s,
            )
        self._final: dict[str, Any] | None = None  # figures frozen at stop()
        self._refused: Counter[str] = Counter()  # records that could not be stored at all

    @property
    def topics(self) -> DeviceTopics:
        return self._topics

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._drain is not None and self._link is not None:
            self._drain.start()
            self._link.start()
        else:
            log.info("MQTT disabled: records are kept in the outbox %s only", self._outbox.path)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish a clean retained "offline" (if connected), disconnect, close the outbox.
        Idempotent."""
        if self._final is not None:
            return
        deadline = time.monotonic() + timeout
        link, drain = self._link, self._drain
        if link is not None and drain is not None:
            if link.connected:
                try:
                    self._append(
                        Kind.STATUS, self._topics.status, status_offline(clean=True), retain=True
                    )
                    while (
                        time.monotonic() < deadline
                        and link.connected
                        and self._outbox.pending(Kind.STATUS) > 0
                    ):
                        time.sleep(_STOP_POLL_S)
                except EdgeAgentError:
                    log.exception("could not publish the offline status on stop")
            drain.stop(max(0.1, deadline - time.monotonic()))
            link.stop(max(0.1, deadline - time.monotonic()))
        # Keep the last figures: the agent writes its final status after stopping us.
        self._final = self._snapshot_now()
        self._outbox.close()

    def dead_threads(self) -> list[str]:
        """Reporting threads that ended on their own while running (for the supervisor)."""
        if self._final is not None or self._drain is None or self._link is None:
            return []
        return [n for n, t in (("drain", self._drain), ("link", self._link)) if not t.alive]

    def outbox_writer(self) -> tuple[bool, float]:
        """(alive, busy_s) of the outbox's writer thread, for the supervisor: busy_s is how
        long it has been inside one storage step (0.0 when idle), so a write that blocks
        (a dying SD card, a hung network filesystem) shows as a loop that stopped turning."""
        if self._final is not None:
            return True, 0.0
        return self._outbox.writer_alive, self._outbox.health().writer_busy_s

    def restart_dead_threads(self) -> None:
        if self._final is None and self._drain is not None and not self._drain.alive:
            self._drain.start()
        if self._final is None and self._link is not None:
            self._link.restart()

    # -- publishing ------------------------------------------------------------------------

    def publish_event(self, payload: dict[str, Any], *, wait: bool = True) -> int:
        """An anomaly start/end; returns its seq. With `wait`, stored durably before this
        returns; without (a stream's scoring thread), queued: durable with the writer's
        next group, before the drain offers it (Outbox.append)."""
        return self._append(Kind.EVENT, self._topics.events, payload, wait=wait)

    def publish_telemetry(self, payload: dict[str, Any]) -> int:
        return self._append(Kind.TELEMETRY, self._topics.telemetry, payload)

    def publish_ota_state(self, payload: dict[str, Any]) -> int:
        return self._append(Kind.OTA, self._topics.ota_state, payload)

    def publish_state(self, section: str, body: Mapping[str, Any]) -> int:
        """A retained device-state section on `<prefix>/<device>/state/<section>`
        (docs/fleet.md). Stored as kind OTA, not STATUS: a STATUS record supersedes every
        undelivered older one, whatever its topic, and would swallow the birth."""
        topic = self._topics.base.child("state", section)
        return self._append(Kind.OTA, topic, body, retain=True)

    def publish_birth(self) -> int:
        """The retained birth again (e.g. the serving models changed); returns its seq."""
        return self._publish_birth()

    def add_connect_listener(self, fn: Callable[[bool], None]) -> None:
        """`fn(session_present)` after each connect (and its birth), on the MQTT thread."""
        self._connect_listeners.append(fn)

    def _append(
        self,
        kind: Kind,
        topic: Topic,
        body: Mapping[str, Any],
        *,
        retain: bool = False,
        wait: bool = True,
    ) -> int:
        """Never raises on a storage fault (the caller may be a stream's scoring thread): the
        record then waits in memory (see Outbox.append); a record over the size limit is
        logged, counted, and -1 is returned. A body the envelope refuses (a reserved key,
        not JSON) is the caller's bug: PublishError, nothing issued."""
        now = time.time()
        if kind is Kind.STATUS and self._link is not None:
            # the outbox replaces undelivered older status records; the link must also stop
            # re-sending those already handed to it (before the newer one can be sent)
            self._link.supersede(topic.value)
        try:
            seq = self._outbox.append(
                kind,
                topic.value,
                lambda s: encode(envelope(self._device, s, now, body)),
                now=now,
                retain=retain,
                wait=wait,
            )
        except PublishError:
            raise
        except Exception as e:  # noqa: BLE001 - publishing must never end a stream
            log.error("outbox: %s record not stored: %s", kind.value, e)
            self._refused[kind.value] += 1
            return -1
        if self._drain is not None:
            self._drain.wake()
        return seq

    # -- commands --------------------------------------------------------------------------

    def register_command(self, name: str, handler: CommandHandler, *, slow: bool = False) -> None:
        """`slow`: the handler may block (it runs on the router's worker, one at a time)."""
        self._router.register(name, handler, slow=slow)

    def _cmd_ping(self, params: dict[str, Any]) -> dict[str, Any]:
        _no_params(params)
        return {"pong": True, "uptime_s": round(time.time() - self._started_at, 3)}

    def _cmd_rebirth(self, params: dict[str, Any]) -> dict[str, Any]:
        _no_params(params)
        return {"seq": self._publish_birth()}

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        """Deliver messages matching `topic_filter` to `handler(topic, payload)`, on the MQTT
        thread (keep it short). Call before start(); the filter is subscribed (QoS 1) again
        on every connect, so retained messages on it arrive after each reconnect."""
        if self._link is not None:
            self._link.add_subscription(topic_filter)
        self._extra.append((topic_filter, handler))

    def _on_message(self, msg: Incoming) -> None:
        from edge_agent.reporting.link import topic_matches  # loaded with the link

        for flt, handler in self._extra:
            if topic_matches(flt, msg.topic):
                handler(msg.topic, msg.payload)
                return
        self._router.handle(
            msg.topic, msg.payload, msg.response_topic, msg.correlation, self._reply
        )

    def _reply(self, reply: Reply) -> None:
        if self._link is None:
            return
        try:
            self._link.publish(reply.topic, reply.payload, correlation=reply.correlation)
        except EdgeAgentError as e:  # too large for the broker, or the link went down
            log.warning("command reply to %s not sent: %s", reply.topic, e)

    # -- status ----------------------------------------------------------------------------

    def _birth_body(self) -> dict[str, Any]:
        try:
            extra = dict(self._birth())
        except Exception:  # the birth must go out even if the callback breaks
            log.exception("birth callback failed; publishing a minimal birth")
            extra = {}
        extra.setdefault("agent_version", __version__)
        extra.setdefault("commands", self._router.names())
        return status_online(extra)

    def _publish_birth(self) -> int:
        body = self._birth_body()
        if self._link is not None and not self._birth_fits(body):
            # A birth the broker refuses would be set aside on every connect: send the
            # essentials instead (the rest is in `edge-agent status` on the device).
            log.warning("MQTT: the birth message is larger than the broker accepts; trimmed")
            body = status_online(
                {"agent_version": __version__, "commands": self._router.names(), "trimmed": True}
            )
            if not self._birth_fits(body):
                body = status_online(
                    {"agent_version": __version__, "commands": [], "trimmed": True}
                )
        return self._append(Kind.STATUS, self._topics.status, body, retain=True)

    def _birth_fits(self, body: Mapping[str, Any]) -> bool:
        assert self._link is not None
        # the largest seq and ts it may carry: the check must hold for the real one
        probe = encode(envelope(self._device, 2**53, 1e10, body))
        return self._link.fits(self._topics.status.value, probe)

    def _on_connected(self, session_present: bool) -> None:
        self._publish_birth()
        for fn in self._connect_listeners:
            fn(session_present)

    def _will(self) -> tuple[Topic, bytes]:
        now = time.time()
        seq = self._outbox.allocate_seq()  # never raises (covered by the reservation)
        body = envelope(self._device, seq, now, status_offline(clean=False))
        return self._topics.status, encode(body)

    def snapshot(self) -> dict[str, Any]:
        return self._final if self._final is not None else self._snapshot_now()

    def _snapshot_now(self) -> dict[str, Any]:
        now = time.time()
        ob = self._outbox.stats()
        mqtt: dict[str, Any] = {
            "enabled": self._link is not None,
            "connected": False,
            "since": None,
            "broker": None,
            "last_publish": None,
            "last_error": None,
            "refused": 0,
            "acl_denied": 0,
            "reconnects": 0,
        }
        if self._link is not None and self._drain is not None:
            st = self._link.stats()
            mqtt.update(
                connected=st.state.value == "connected",
                state=st.state.value,
                since=st.since,
                broker=st.broker,
                last_publish=self._drain.last_publish,
                last_error=st.last_error,
                refused=st.refused,
                acl_denied=st.acl_denied,
                reconnects=st.reconnects,
                takeovers=st.takeovers,
                last_takeover=st.last_takeover,
                oversized=st.oversized,
                max_packet_size=st.max_packet_size,
                rejected=self._drain.rejected(),
            )
            mqtt["ack_timeouts"] = self._drain.ack_timeouts
            mqtt["unacked_since"] = self._drain.unacked_since
        age = ob.oldest_age_s(now)
        return {
            "mqtt": mqtt,
            "outbox": {
                "depth": ob.depth,
                "bytes": ob.bytes,
                "oldest_age_s": None if age is None else round(age, 3),
                "drops": ob.drops,
                "path": ob.path,
                **outbox_health(self._outbox.health(), dict(self._refused)),
            },
        }

    # -- foreign formats -------------------------------------------------------------------

    def publish_raw(self, topic: str, payload: bytes, *, periodic: bool = False) -> int:
        """A retained message in another system's format (Home Assistant discovery and its
        state topics, reporting/ha_discovery.py), sent as given, without our envelope.
        Durable like every record: kind OTA (a STATUS record would supersede the birth),
        or with `periodic` (a value sent again soon anyway) kind TELEMETRY, dropped first
        when the outbox is full. Returns its outbox seq (the payload does not carry it),
        -1 if it was not stored."""
        kind = Kind.TELEMETRY if periodic else Kind.OTA
        return self._append_bytes(kind, Topic(topic), payload, retain=True)

    def _append_bytes(self, kind: Kind, topic: Topic, payload: bytes, *, retain: bool) -> int:
        now = time.time()
        try:
            seq = self._outbox.append(
                kind, topic.value, lambda _seq: payload, now=now, retain=retain
            )
        except Exception as e:  # noqa: BLE001 - like _append: never end the caller's loop
            log.error("outbox: %s record for %s not stored: %s", kind.value, topic.value, e)
            self._refused[kind.value] += 1
            return -1
        if self._drain is not None:
            self._drain.wake()
        return seq
