"""The MQTT link: one paho client, our reconnect loop, errors translated where they enter.

paho runs its network thread only while a connection is up (`reconnect_on_failure` is
off); between connections our supervisor thread waits an exponential backoff with
jitter and connects again. The session is persistent (MQTT 5 clean_start=False with a
session expiry; 3.1.1 clean_session=False), so paho re-sends its unacknowledged
messages after a reconnect and the broker keeps our command subscription.

Callbacks from paho arrive on paho's thread. The link never calls back into the
outbox while holding paho's locks: acknowledgements go into `acks`, a queue the drain
thread consumes.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import random
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.backoff import Backoff
from edge_agent.config import MqttConfig
from edge_agent.errors import ConfigError, PacketTooLargeError, PublishError
from edge_agent.reporting.paho_lean import paho
from edge_agent.reporting.session_watch import (
    PACKET_TOO_LARGE,
    DropKind,
    Sent,
    SessionWatch,
    publish_packet_size,
)
from edge_agent.reporting.topics import Topic

__all__ = [
    "NOT_AUTHORIZED",
    "SUPERSEDED",
    "Ack",
    "Incoming",
    "LinkState",
    "LinkStats",
    "MqttLink",
    "topic_matches",
]

log = logging.getLogger(__name__)

# MQTT 5 reason code a broker uses when an ACL denies a publish.
NOT_AUTHORIZED = 0x87
# After a session takeover the next attempt waits at least this long, doubling per
# takeover up to reconnect_max_s: two agents with one client id each give way.
TAKEOVER_BACKOFF_MIN_S = 5.0
# A paho-side bound on queued QoS>0 messages beyond our own window (command replies).
_PAHO_INFLIGHT_HEADROOM = 10
# Ack.reason of a message the link stopped sending because a newer retained message to
# its topic was queued (supersede()): not delivered, not refused; the outbox decides.
SUPERSEDED = -1


# How long paho's thread waits in a callback for publishes in progress (see
# MqttLink._await_publishes): a descheduled publisher is back within milliseconds.
PUBLISH_WAIT_S = 1.0


class LinkState(str, enum.Enum):
    DISABLED = "disabled"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    REFUSED = "refused"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class Ack:
    """A PUBACK: `reason` >= 0x80 means the broker refused the message (e.g. ACL);
    SUPERSEDED (negative) means the link dropped it unsent-again (see supersede())."""

    mid: int
    reason: int
    reason_name: str


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


@dataclass(frozen=True)
class LinkStats:
    state: LinkState
    since: float | None
    broker: str
    last_error: str | None
    refused: int
    acl_denied: int
    reconnects: int
    takeovers: int = 0  # another client took our session (same client id)
    last_takeover: float | None = None
    oversized: int = 0  # messages larger than the broker accepts, set aside
    max_packet_size: int | None = None  # announced by the broker (MQTT 5) or learned


class _Client(paho.Client):
    """paho's Client, minus a socket leak in our connect-then-loop_start cycle."""

    def loop_start(self) -> MQTTErrorCode:
        # connect() made a wake-up socket pair and loop_start() makes a new one without
        # closing it; close it first (paho 2.2), or every reconnect leaks two sockets.
        self._reset_sockets(sockpair_only=True)
        return super().loop_start()

    def discard_outgoing(self, mid: int) -> bool:
        """Forget an unacknowledged message so it is not re-sent on the next connect (a
        persistent session re-sends every one). Call only while disconnected."""
        with self._out_message_mutex:
            return self._out_messages.pop(mid, None) is not None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching ('+' one level, '#' the rest), as the broker does it."""
    return bool(paho.topic_matches_sub(topic_filter, topic))


def read_password(cfg: MqttConfig) -> str | None:
    """The password from `password_file` or the systemd credential; None if neither is set."""
    if cfg.password_file:
        path = Path(cfg.password_file)
    elif cfg.password_credential:
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError(
                f"mqtt.password_credential = {cfg.password_credential!r} but "
                "$CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the systemd unit)"
            )
        path = Path(cred_dir) / cfg.password_credential
    else:
        return None
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"MQTT password file {path}: cannot read: {e}") from e


def apply_credentials(c: paho.Client, cfg: MqttConfig) -> None:
    """User name, password and TLS from `cfg` onto a paho client. ConfigError when a
    file they name cannot be used."""
    password = read_password(cfg)
    if cfg.username or password is not None:
        c.username_pw_set(cfg.username or None, password)
    tls = cfg.tls
    if not tls.enabled:
        return
    for what, f in (
        ("ca_file", tls.ca_file),
        ("cert_file", tls.cert_file),
        ("key_file", tls.key_file),
    ):
        if f and not Path(f).is_file():
            raise ConfigError(f"mqtt.tls.{what}: {f}: no such file")
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("mqtt.tls: cert_file and key_file go together (mTLS)")
    import ssl  # only with TLS configured (paho_lean: ~1.2 MB resident otherwise)

    try:
        c.tls_set(
            ca_certs=tls.ca_file or None,
            certfile=tls.cert_file or None,
            keyfile=tls.key_file or None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"mqtt.tls: cannot load certificates: {e}") from e
    if tls.insecure:
        c.tls_insecure_set(True)


def _close_sockets_of(e: BaseException) -> None:
    """Close the sockets a failed paho connect left open (paho 2.2 does not close the
    socket when the TLS handshake fails; it would otherwise leak until GC)."""
    tb = e.__traceback__
    while tb is not None:
        for v in list(tb.tb_frame.f_locals.values()):
            if isinstance(v, socket.socket):
                v.close()
        tb = tb.tb_next


def describe_connect_error(e: OSError, broker: str) -> str:
    if "ssl" in sys.modules:  # not loaded: no TLS socket exists, e is no TLS error
        import ssl

        if isinstance(e, ssl.SSLCertVerificationError):
            return (
                f"TLS handshake with {broker} failed: certificate verify failed "
                f"({e.verify_message}) -- the broker's certificate is not signed by "
                "mqtt.tls.ca_file, or its name does not match the host"
            )
        if isinstance(e, ssl.SSLError):
            return f"TLS handshake with {broker} failed: {e.reason or e}"
    return f"cannot connect to {broker}: {e.strerror or e}"


class MqttLink:
    """Connects, keeps connecting, publishes, and reports what the broker said."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        will: Callable[[], tuple[Topic, bytes]],
        on_connected: Callable[[bool], None],
        on_message: Callable[[Incoming], None],
        subscriptions: tuple[str, ...] = (),
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._will = will
        self._on_connected = on_connected
        self._on_message = on_message
        self._subscriptions = list(subscriptions)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._backoff = Backoff(cfg.reconnect_min_s, max(cfg.reconnect_min_s, cfg.reconnect_max_s))
        self._takeover_backoff = Backoff(
            TAKEOVER_BACKOFF_MIN_S, max(TAKEOVER_BACKOFF_MIN_S, cfg.reconnect_max_s)
        )
        self._taken_over = False  # the last connection ended in a takeover
        self.broker = f"{cfg.host}:{cfg.port}"
        self.acks: queue.SimpleQueue[Ack] = queue.SimpleQueue()
        # Called (on paho's thread) after an Ack is queued or the link came up.
        self.wake_hook: Callable[[], None] = lambda: None
        self.v5 = cfg.protocol == "5"
        self._lock = threading.Lock()
        self._state = LinkState.DISCONNECTED
        self._since: float | None = None
        self._last_error: str | None = None
        self._refused = 0
        self._acl_denied = 0
        self._connects = 0
        self._oversized = 0
        self._client_id = client_id
        self._watch = SessionWatch(client_id=client_id, broker=self.broker, v5=self.v5)
        # QoS 1 messages written and not yet acknowledged, oldest first (paho's thread
        # and publishers both touch it: under self._lock)
        self._inflight: OrderedDict[int, Sent] = OrderedDict()
        self._acked_early: set[int] = set()
        self._pending_aside: list[Sent] = []  # judged at a drop, discarded after it
        # Publishes between "paho may write it" and "we know its mid": paho's thread can
        # write one and see the broker's answer to it (a close, a CONNACK's limit) before
        # the publisher runs again. Its callbacks wait for these first (PUBLISH_WAIT_S).
        self._publishers: dict[int, int] = {}  # thread id -> its publishes in progress
        self._published = threading.Condition(self._lock)
        self._retained: dict[int, str] = {}  # unacknowledged retained mid -> its topic
        self._stale: set[int] = set()  # superseded: never to be re-sent
        self._stop = threading.Event()
        self._gone = threading.Event()
        self._dropping = False  # force_reconnect() is ending the connection
        self._thread: threading.Thread | None = None
        self._client = self._make_client(client_id)

    def add_subscription(self, topic_filter: str) -> None:
        """Subscribe (QoS 1) to one more filter on every connect; call before start()."""
        if self._thread is not None:
            raise PublishError("add subscriptions before the link starts")
        self._subscriptions.append(topic_filter)

    def _make_client(self, client_id: str) -> _Client:
        c = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else False,
            reconnect_on_failure=False,
        )
        c.max_inflight_messages_set(self._cfg.max_inflight + _PAHO_INFLIGHT_HEADROOM)
        c.max_queued_messages_set(0)
        apply_credentials(c, self._cfg)
        c.on_connect = self._handle_connect
        c.on_disconnect = self._handle_disconnect
        c.on_publish = self._handle_publish
        c.on_message = self._handle_message
        return c

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._supervise, name="mqtt-link", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The connection thread runs (for the agent's supervisor)."""
        return self._thread is not None and self._thread.is_alive()

    def restart(self) -> None:
        """Start the connection thread again after it ended on its own (a bug)."""
        if not self.alive and not self._stop.is_set():
            self._thread = None
            self.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (the broker does not publish the Last Will) and stop."""
        self._stop.set()
        try:
            self._client.disconnect()
        except (OSError, ValueError):
            log.debug("disconnect on stop failed", exc_info=True)
        self._gone.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._client.loop_stop()
        self._set_state(LinkState.DISCONNECTED, None)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            self._gone.clear()
            if self._connect_once():
                self._client.loop_start()
                while not self._stop.is_set() and not self._gone.wait(1.0):
                    pass
                self._client.loop_stop()
                if self._state is LinkState.CONNECTED:
                    self._set_state(LinkState.DISCONNECTED, None)
                # paho's thread has ended: now its queue may change
                with self._lock:
                    aside, self._pending_aside = self._pending_aside, []
                self._set_aside(aside)
                self._drop_stale()
            if self._stop.is_set():
                break
            draw = self._rng.random()
            delay = self._backoff.next_delay(draw)
            if self._taken_over:
                self._taken_over = False
                delay = max(delay, self._takeover_backoff.next_delay(draw))
            log.info("MQTT: next connection attempt to %s in %.1f s", self.broker, delay)
            self._stop.wait(delay)

    def _connect_once(self) -> bool:
        try:
            topic, payload = self._will()
        except Exception as e:  # a failed Will must not end this thread
            log.exception("MQTT: cannot build the Last Will; not connecting this time")
            self._error(f"cannot build the Last Will: {e}")
            return False
        self._set_state(LinkState.CONNECTING, None)
        try:
            self._client.will_set(topic.value, payload, qos=1, retain=True)
            props: Properties | None = None
            if self.v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self._cfg.session_expiry_s
                self._client.connect(
                    self._cfg.host,
                    self._cfg.port,
                    self._cfg.keepalive_s,
                    clean_start=False,
                    properties=props,
                )
            else:
                self._client.connect(self._cfg.host, self._cfg.port, self._cfg.keepalive_s)
        except OSError as e:
            _close_sockets_of(e)
            self._error(describe_connect_error(e, self.broker))
            self._set_state(LinkState.DISCONNECTED, None)
            return False
        except ValueError as e:
            self._error(f"cannot connect to {self.broker}: {e}")
            self._set_state(LinkState.DISCONNECTED, None)
            return False
        return True

    # -- paho callbacks (paho's thread) ----------------------------------------------------

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            # the error first: whoever sees the count must also see why
            self._error(
                f"broker {self.broker} refused the connection: {reason.getName()} "
                f"(reason code 0x{reason.value:02x})"
            )
            with self._lock:
                self._refused += 1
            self._set_state(LinkState.REFUSED, None)
            self._gone.set()
            return
        announced = getattr(properties, "MaximumPacketSize", None) if properties else None
        now = time.monotonic()
        self._dropping = False
        with self._lock:
            self._connects += 1
            self._watch.connected(now, announced)
            self._await_publishes()
            # paho re-sends every unacknowledged message right after this callback
            for mid, sent in self._inflight.items():
                self._inflight[mid] = Sent(mid, sent.size, now, sent.key)
            # queued before the limit was known: take them out before paho re-sends them
            # (it does so right after this callback)
            aside = [x for x in self._inflight.values() if self._watch.too_large(x.size)]
            for sent in aside:
                del self._inflight[sent.mid]
            self._oversized += len(aside)
        self._set_aside(aside)
        # The backoff starts again from its minimum only after a stable connection
        # (SessionWatch): a broker that drops us right after CONNACK gets no storm.
        log.info("MQTT: connected to %s (session present: %s)", self.broker, flags.session_present)
        for sub in self._subscriptions:
            client.subscribe(sub, qos=1)
        # The birth goes into the outbox before the drain may send anything.
        try:
            self._on_connected(flags.session_present)
        except Exception:  # a failing birth must not kill paho's thread
            log.exception("MQTT: on-connect handler failed")
        # older births the new one superseded: out before paho re-sends them (each would
        # cost a dropped connection where the broker refuses its size)
        self._drop_stale()
        self._set_state(LinkState.CONNECTED, time.time())
        self.wake_hook()

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._state
        if was is not LinkState.REFUSED:  # a refused CONNACK was reported already
            self._judge_drop(reason)
            self._set_state(LinkState.DISCONNECTED, None)
        self._gone.set()

    def _judge_drop(self, reason: ReasonCode) -> None:
        with self._lock:
            self._await_publishes()
            verdict = self._watch.dropped(
                time.monotonic(),
                time.time(),
                int(reason.value),
                reason.getName(),
                by_us=self._stop.is_set() or self._dropping,
                inflight=list(self._inflight.values()),
            )
            for sent in verdict.set_aside:
                self._inflight.pop(sent.mid, None)
            self._oversized += len(verdict.set_aside)
        if verdict.reset_backoff:
            self._backoff.reset()
            self._takeover_backoff.reset()
        if verdict.kind is DropKind.TAKEOVER:
            self._taken_over = True
            self._error(verdict.message + "; backing off")
        elif verdict.message:
            self._error(verdict.message)
        # Not here: paho may be iterating its message queue when the socket breaks
        # (_supervise does it once paho's thread has stopped).
        with self._lock:
            self._pending_aside.extend(verdict.set_aside)

    def _set_aside(self, messages: Sequence[Sent]) -> None:
        """Never send these again (paho would re-send them on every connect). Only while
        paho's thread is stopped, or from its on_connect (before it re-sends)."""
        for sent in messages:
            self._client.discard_outgoing(sent.mid)
            with self._lock:
                self._forget(sent.mid)
            # the drain deletes the record and counts it, as for any refused message
            self.acks.put(Ack(sent.mid, PACKET_TOO_LARGE, "Packet too large"))
        if messages:
            self.wake_hook()

    def supersede(self, topic: str) -> int:
        """A newer retained message to `topic` is about to be queued: the unacknowledged
        ones to it are stale (a retained topic keeps only the newest) and are not sent
        again; each gets an Ack with reason SUPERSEDED. Any thread; call it before queuing
        the newer one. Returns how many were marked. A stale message already written on
        the current connection may still be acknowledged; it is dropped at the next
        connect (before paho re-sends) or disconnect."""
        with self._lock:
            stale = {m for m, t in self._retained.items() if t == topic}
            self._stale |= stale
        return len(stale)

    def _drop_stale(self) -> None:
        """Discard superseded messages from paho's queue. Only while paho's thread is
        stopped, or from its on_connect (before it re-sends)."""
        with self._lock:
            stale, self._stale = self._stale, set()
            for mid in stale:
                self._inflight.pop(mid, None)
                self._forget(mid)
        dropped = [mid for mid in sorted(stale) if self._client.discard_outgoing(mid)]
        for mid in dropped:
            self.acks.put(Ack(mid, SUPERSEDED, "Superseded"))
        if dropped:
            log.info("MQTT: %d superseded retained message(s) will not be re-sent", len(dropped))
            self.wake_hook()

    def _forget(self, mid: int) -> None:
        """`mid` is done (acknowledged, set aside, superseded). Under self._lock."""
        self._retained.pop(mid, None)
        self._stale.discard(mid)

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        code = int(reason.value)
        with self._lock:
            sent = self._inflight.pop(mid, None)
            self._forget(mid)
            if sent is None:
                self._acked_early.add(mid)
            elif code < 0x80:
                self._watch.acked(sent.size)
        if code >= 0x80:
            with self._lock:
                if code == NOT_AUTHORIZED:
                    self._acl_denied += 1
            self._error(
                f"broker refused a publish: {reason.getName()} (reason code 0x{code:02x}); "
                "check the broker ACL for this device's topics"
            )
        self.acks.put(Ack(mid, code, reason.getName()))
        self.wake_hook()

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            self._on_message(Incoming(msg.topic, bytes(msg.payload), response, corr))
        except Exception:  # a failing handler must not kill paho's thread
            log.exception("MQTT: message handler failed for %s", msg.topic)

    # -- publishing (any thread) ----------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        correlation: bytes | None = None,
    ) -> int:
        """Hand one QoS 1 message to paho; return its mid (the key of its Ack)."""
        props: Properties | None = None
        if correlation is not None and self.v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = correlation
        size = self.packet_size(topic, payload, props)
        with self._lock:
            too_large = self._watch.too_large(size)
            limit = self._watch.limit
            if too_large:
                self._oversized += 1
        if too_large:
            raise PacketTooLargeError(
                f"a {size}-byte message to {topic!r} is larger than broker {self.broker} "
                f"accepts (maximum packet size {limit}); set aside, not retried"
            )
        me = threading.get_ident()
        with self._lock:
            self._publishers[me] = self._publishers.get(me, 0) + 1
            written = time.monotonic()  # paho may write it from now on
        mid: int | None = None
        try:
            # Not under self._lock: paho's thread holds paho's locks when it calls us.
            info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                # NO_CONN: paho keeps QoS 1 messages and sends them after the reconnect.
                raise PublishError(f"cannot publish to {topic!r}: {paho.error_string(info.rc)}")
            mid = int(info.mid)
        except (ValueError, TypeError, OSError) as e:
            raise PublishError(f"cannot publish to {topic!r}: {e}") from e
        finally:
            with self._published:
                left = self._publishers.pop(me) - 1
                if left:
                    self._publishers[me] = left
                if mid is not None:
                    if mid in self._acked_early:  # the PUBACK beat us here
                        self._acked_early.discard(mid)
                    else:
                        self._inflight[mid] = Sent(mid, size, written, topic if retain else None)
                        if retain:
                            self._retained[mid] = topic
                self._published.notify_all()
        return mid

    def _await_publishes(self) -> None:
        """Under self._lock, on paho's thread: let publishes paho may already have
        written register their mids, so that what the broker answered (a close right
        after one, a CONNACK's limit) is judged with them. Bounded: a publisher that
        waits for a paho lock this thread holds is not waited for, nor this thread's own
        publish (paho without its thread writes, and may see the close, in publish())."""
        me = threading.get_ident()
        if any(t != me for t in self._publishers):
            self._published.wait_for(lambda: all(t == me for t in self._publishers), PUBLISH_WAIT_S)

    def packet_size(self, topic: str, payload: bytes, props: Properties | None = None) -> int:
        """Bytes of the PUBLISH packet for this message, as the broker's limit counts them."""
        plen: int | None = None
        if self.v5:
            plen = len(props.pack()) if props is not None else 1  # type: ignore[no-untyped-call]
        return publish_packet_size(topic, len(payload), properties_len=plen)

    def fits(self, topic: str, payload: bytes) -> bool:
        """False if the broker is known not to accept this message (its size)."""
        size = self.packet_size(topic, payload)
        with self._lock:
            return not self._watch.too_large(size)

    # -- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._state is LinkState.CONNECTED

    def _set_state(self, state: LinkState, since: float | None) -> None:
        with self._lock:
            # `since` is when the link went up or down: connecting, refused and
            # disconnected are all "down", so a failed attempt does not restart the clock.
            if self._since is None or (state is LinkState.CONNECTED) != (
                self._state is LinkState.CONNECTED
            ):
                self._since = since if since is not None else time.time()
            self._state = state

    def force_reconnect(self, reason: str) -> None:
        """Drop a connection that is up but useless (e.g. no PUBACK within the ack
        timeout): log `reason`; the supervisor thread connects again with its backoff."""
        self._error(reason)
        self._dropping = True  # our own drop: says nothing about the broker's limits
        try:
            self._client.disconnect()
        except (OSError, ValueError):
            log.debug("disconnect for a reconnect failed", exc_info=True)
        self._gone.set()

    def _error(self, msg: str) -> None:
        log.error("MQTT: %s", msg)
        with self._lock:
            self._last_error = msg

    def stats(self) -> LinkStats:
        with self._lock:
            return LinkStats(
                state=self._state,
                since=self._since,
                broker=self.broker,
                last_error=self._last_error,
                refused=self._refused,
                acl_denied=self._acl_denied,
                reconnects=max(0, self._connects - 1),
                takeovers=self._watch.takeovers,
                last_takeover=self._watch.last_takeover,
                oversized=self._oversized,
                max_packet_size=self._watch.limit,
            )
