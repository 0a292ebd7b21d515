"""The operator's MQTT side of `edge-ota fleet`: read retained device state, send commands.

Reading: subscribe (QoS 0) to the device topics, then publish a sentinel to a topic of our
own; the broker sends the retained messages of a subscription before anything published
after it, so the sentinel's arrival means every retained message was read. If it never
comes (an ACL that forbids it, a broker that orders otherwise) reading ends after a quiet
period with nothing new, and always by `max_s`: bounded however many devices there are.
Commands: MQTT 5 requests carry a response topic (the device's own
`<prefix>/<device>/cmd/<name>/reply`, which the device ACL lets it write) and unique
correlation data; with 3.1.1 the device answers on that same topic without them.
paho's errors and OSError are translated into PublishError where they enter.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.errors import PublishError

__all__ = [
    "BrokerOptions",
    "CommandReplies",
    "FleetClient",
    "device_filters",
    "read_retained",
    "section_filters",
    "send_command",
]

CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class BrokerOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edge"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: str = "5"  # or "3.1.1"
    client_id: str = ""

    @property
    def v5(self) -> bool:
        return self.protocol == "5"


def device_filters(prefix: str) -> list[str]:
    return [f"{prefix}/+/status", f"{prefix}/+/state/+"]


Handler = Callable[[paho.MQTTMessage], None]


class FleetClient:
    """One clean-session connection; messages go to `on_message` on paho's thread."""

    def __init__(self, opts: BrokerOptions, on_message: Handler) -> None:
        self.opts = opts
        cid = opts.client_id or f"edge-ota-{uuid.uuid4().hex[:10]}"
        self.client_id = cid
        proto = paho.MQTTv5 if opts.v5 else paho.MQTTv311
        kw: dict[str, Any] = {} if opts.v5 else {"clean_session": True}
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto, **kw)
        if opts.username is not None:
            c.username_pw_set(opts.username, _password(opts.password_file))
        if opts.ca_file is not None:
            try:
                c.tls_set(
                    ca_certs=str(opts.ca_file),
                    certfile=str(opts.cert_file) if opts.cert_file else None,
                    keyfile=str(opts.key_file) if opts.key_file else None,
                )
            except (OSError, ValueError) as e:
                raise PublishError(f"TLS files: {e}") from e
        self._connected = threading.Event()
        self._refused = ""
        self._subacks: set[int] = set()
        self._suback_cv = threading.Condition()
        self.denied: dict[int, str] = {}  # mid -> the broker's reason (MQTT 5 PUBACK)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.on_message = lambda _c, _u, msg: on_message(msg)
        self._c = c

    def __enter__(self) -> FleetClient:
        o = self.opts
        try:
            self._c.connect(o.host, o.port, keepalive=30)
        except (OSError, ValueError) as e:
            raise PublishError(f"cannot connect to MQTT broker {o.host}:{o.port}: {e}") from e
        self._c.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S):
            self.close()
            raise PublishError(f"no CONNACK from {o.host}:{o.port} in {CONNECT_TIMEOUT_S:g} s")
        if self._refused:
            self.close()
            raise PublishError(f"broker {o.host}:{o.port} refused the connection: {self._refused}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()

    def _on_connect(self, c: paho.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        self._connected.set()

    def _on_subscribe(self, c: paho.Client, u: Any, mid: int, codes: Any, props: Any) -> None:
        with self._suback_cv:
            self._subacks.add(mid)
            self._suback_cv.notify_all()

    def _on_publish(self, c: paho.Client, u: Any, mid: int, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):  # e.g. 0x87 Not authorized by an ACL
            with self._suback_cv:
                self.denied[mid] = str(reason)
                self._suback_cv.notify_all()

    def subscribe(
        self,
        filters: Iterable[str],
        qos: int = 0,
        timeout_s: float = 10.0,
        *,
        retained: bool = True,
    ) -> None:
        """Subscribe and wait for the SUBACK of each filter. `retained=False` (MQTT 5):
        live messages only, the broker does not send what it has retained."""
        from paho.mqtt.subscribeoptions import SubscribeOptions

        mids = []
        for f in filters:
            if self.opts.v5:
                opt = SubscribeOptions(qos=qos, retainHandling=0 if retained else 2)
                rc, mid = self._c.subscribe(f, options=opt)
            else:
                rc, mid = self._c.subscribe(f, qos=qos)
            if rc != paho.MQTT_ERR_SUCCESS:
                raise PublishError(f"subscribe {f!r} failed: {paho.error_string(rc)}")
            mids.append(mid)
        deadline = time.monotonic() + timeout_s
        with self._suback_cv:
            while not set(mids) <= self._subacks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PublishError(f"no SUBACK from the broker in {timeout_s:g} s")
                self._suback_cv.wait(left)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> int:
        """Returns the message id (see `denied`)."""
        props = None
        if self.opts.v5 and (response_topic or correlation):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation:
                props.CorrelationData = correlation
        info = self._c.publish(topic, payload, qos=qos, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        return int(info.mid)


def _password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as e:
        raise PublishError(f"password file {path}: {e.strerror or e}") from e


def section_filters(prefix: str) -> list[str]:
    """What `read_retained` subscribes, one after the other (see there)."""
    return [f"{prefix}/+/status"] + [
        f"{prefix}/+/state/{x}" for x in ("health", "models", "ota", "alarms")
    ]


def read_retained(
    opts: BrokerOptions, *, quiet_s: float = 1.0, max_s: float = 60.0
) -> tuple[list[tuple[str, bytes]], str]:
    """Every retained device message (topic, payload), and how reading ended
    ("sentinel", "quiet" or "max"). One filter at a time, each closed by its sentinel: a
    broker drops what a slow subscriber has not taken once its per-client queue is full
    (mosquitto: max_queued_messages, 1000 by default), so the burst is kept to one
    section of the fleet, and the callback does as little as possible."""
    got: dict[str, bytes | bytearray] = {}
    last = [time.monotonic()]
    seen = threading.Event()
    sentinel = [""]
    want = [b""]

    def on_message(msg: paho.MQTTMessage) -> None:  # paho's thread: keep it short
        last[0] = time.monotonic()
        if msg.topic == sentinel[0]:
            if msg.payload == want[0]:
                seen.set()
        else:
            got[msg.topic] = msg.payload

    start = time.monotonic()
    how = "sentinel"
    with FleetClient(opts, on_message) as fc:
        sentinel[0] = f"{opts.prefix}/_ops/{fc.client_id}/sync"
        fc.subscribe([sentinel[0]])
        for i, flt in enumerate(section_filters(opts.prefix)):
            seen.clear()
            want[0] = str(i).encode()
            fc.subscribe([flt])
            last[0] = time.monotonic()
            fc.publish(sentinel[0], want[0])
            while not seen.wait(0.05):
                if time.monotonic() - start >= max_s:
                    how = "max"
                    break
                if time.monotonic() - last[0] >= quiet_s:
                    how = "quiet"  # the sentinel did not come back (e.g. an ACL)
                    break
            if how == "max":
                break
        items = [(t, bytes(p)) for t, p in list(got.items())]
    return items, how


@dataclass
class CommandReplies:
    """Replies per device: each a reply body (docs/schemas/command_reply.json)."""

    sent: list[str]
    replies: dict[str, list[dict[str, Any]]]

    def complete(self, device: str) -> bool:
        got = self.replies.get(device) or []
        if not got:
            return False
        first = got[0]
        result = first.get("result")
        if not first.get("ok") or not isinstance(result, dict) or "chunks" not in result:
            return True
        want = result.get("chunks")
        seen = {r.get("result", {}).get("chunk") for r in got if isinstance(r.get("result"), dict)}
        return isinstance(want, int) and seen >= set(range(want))


def send_command(
    opts: BrokerOptions,
    devices: Sequence[str],
    name: str,
    payload: bytes,
    timeout_s: float,
) -> CommandReplies:
    """Send `name` to each device and collect the replies until every device answered
    in full (all chunks) or `timeout_s` passed."""
    import json

    token = uuid.uuid4().hex[:12]
    corr = {d: f"{token}:{d}".encode() for d in devices}
    by_corr = {v: k for k, v in corr.items()}
    out = CommandReplies(list(devices), {})
    cv = threading.Condition()

    def on_message(msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        c = getattr(props, "CorrelationData", None) if props is not None else None
        parts = msg.topic.split("/")
        if c is not None:
            device = by_corr.get(bytes(c))
        else:
            # 3.1.1, or a bridge that dropped the MQTT 5 properties: match by topic
            device = parts[-4] if len(parts) >= 4 and parts[-4] in corr else None
        if device is None:
            return  # someone else's request
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"ok": False, "error": "reply is not JSON"}
        with cv:
            out.replies.setdefault(device, []).append(body)
            cv.notify_all()

    with FleetClient(opts, on_message) as fc:
        fc.subscribe([f"{opts.prefix}/+/cmd/{name}/reply"], qos=1)
        mids = {}
        for d in devices:
            reply = f"{opts.prefix}/{d}/cmd/{name}/reply"
            mids[fc.publish(f"{opts.prefix}/{d}/cmd/{name}", payload, 1, reply, corr[d])] = d
        deadline = time.monotonic() + timeout_s
        with cv:
            while not all(out.complete(d) for d in devices):
                for mid, why in list(fc.denied.items()):
                    refused = mids.get(mid)
                    if refused is not None and not out.replies.get(refused):
                        err = f"the broker refused the request ({why}): see the ACL"
                        out.replies[refused] = [{"ok": False, "error": err}]
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                cv.wait(min(left, 0.2))
    return out
