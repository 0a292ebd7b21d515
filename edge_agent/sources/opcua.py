"""PLCs and SCADA servers over OPC UA: subscribe to nodes (or poll them) with asyncua.

asyncua is asynchronous; this source runs it on a small event loop thread of its own
and hands samples to the runner's thread through a bounded queue (overflow counted).
asyncua is imported only when an opcua stream opens (the `opcua` extra).

subscribe: one subscription with a data-change monitored item per node, sampled by the
  server every `sampling_interval_ms`; notifications (stamped with the device's source
  timestamps) are resampled onto a `rate_hz` grid in source time (see opcua_grid.py).
poll: every 1/rate_hz, one Read of all nodes; a sample's time is the newest source
  timestamp in it, or the poll's time when every value is older (unchanged values).

A node that cannot be found (wrong id, browse path without a match, deleted from the
server) is NaN and counted (`node_missing:<channel>`); it is looked for again every
`node_check_s`, and subscribed again once it is back. A bad status on a value is NaN
and counted (`bad_status:<channel>:<StatusName>`). A lost connection (server restarted,
network down) raises SourceDisconnectedError: the runner reconnects with backoff and
`open` subscribes afresh.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edge_agent.errors import SourceDisconnectedError, SourceError
from edge_agent.schema import check
from edge_agent.sources.aioloop import LoopThread
from edge_agent.sources.base import Block, Source
from edge_agent.sources.opcua_grid import AsOfGrid
from edge_agent.sources.opcua_security import read_secret, secure, translate_error
from edge_agent.sources.rate import RateMeter

__all__ = ["NodeSpec", "OpcUaSource", "Options"]

log = logging.getLogger(__name__)


QUEUE_ITEMS = 65536  # notifications or polled rows waiting for the runner's thread
_UNKNOWN = frozenset({"BadNodeIdUnknown", "BadNodeIdInvalid", "BadNoMatch", "BadBrowseNameInvalid"})


@dataclass(frozen=True)
class NodeSpec:
    """One channel: a node by id (`ns=2;s=Press.Temp`, `ns=3;i=1001`) or by browse path
    from the Objects folder (`2:Press/2:Temp`, each step `<namespace index>:<name>`)."""

    name: str = field(metadata=check("nonempty"))
    node_id: str = ""
    browse_path: str = ""

    def __post_init__(self) -> None:
        if bool(self.node_id) == bool(self.browse_path):
            raise ValueError(f"channel {self.name!r}: give exactly one of node_id, browse_path")


@dataclass(frozen=True)
class Options:
    url: str = field(metadata=check("nonempty"))  # opc.tcp://host:4840/path
    channels: tuple[NodeSpec, ...] = field(metadata=check("nonempty"))
    mode: Literal["subscribe", "poll"] = "subscribe"
    rate_hz: float = field(default=10.0, metadata=check("positive"))
    sampling_interval_ms: float = field(default=0.0, metadata=check("nonneg"))  # 0: 1000/rate_hz
    publishing_interval_ms: float = field(default=100.0, metadata=check("positive"))
    timeout_s: float = field(default=4.0, metadata=check("positive"))
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: str = ""  # this client's certificate (PEM or DER)
    private_key: str = ""  # its private key (PEM)
    server_certificate: str = ""  # pin the server's certificate; "" = take the endpoint's
    application_uri: str = ""  # "" = the URI in the client certificate
    username: str = ""
    password_file: str = ""
    node_check_s: float = field(default=5.0, metadata=check("positive"))
    rate_window_s: float = field(default=10.0, metadata=check("positive"))

    def __post_init__(self) -> None:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"channels: duplicate names in {names}")
        if not self.url.startswith("opc.tcp://"):
            raise ValueError(f"url must start with opc.tcp://, got {self.url!r}")
        if "@" in self.url.split("/", 3)[2]:
            # asyncua would log in with it, and the url is shown in status, logs and events;
            # the url is not echoed here for the same reason
            raise ValueError(
                "url carries a user (user:password@host): set username, and the password "
                "in a file named by password_file"
            )
        if self.security_policy != "None" and not (self.certificate and self.private_key):
            raise ValueError(
                f"security_policy {self.security_policy!r} needs certificate and private_key "
                "(files holding this client's certificate and key)"
            )

    @property
    def sampling_ms(self) -> float:
        return self.sampling_interval_ms or 1000.0 / self.rate_hz


class OpcUaSource(Source):
    kind = "opcua"

    def __init__(self, name: str, options: Options) -> None:
        super().__init__(name, options)
        self._loop: LoopThread | None = None
        self._client: Any = None
        self._sub: Any = None
        self._lost = ""
        self._nodes: list[Any] = [None] * len(options.channels)  # asyncua Nodes, None = missing
        self._handles: dict[int, int] = {}  # channel -> monitored item handle
        self._by_node: dict[str, int] = {}  # node id string -> channel
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ready = threading.Event()
        self._grid = AsOfGrid(len(options.channels), 1.0 / options.rate_hz)
        self._meter = RateMeter(options.rate_window_s)
        self._next = 0
        self._opened_before = False
        self._seen: set[int] = set()
        self._prime_until: float | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.options.channels)

    @property
    def measured_rate_hz(self) -> float:
        return self._meter.rate_hz

    # -- open / close (runner thread) ----------------------------------------------------

    def open(self) -> None:
        try:
            import asyncua  # noqa: F401 - fail here, with the hint, not deep in a coroutine
        except ImportError as e:
            raise SourceError(
                "the opcua source needs asyncua: pip install 'asyncua>=2.1,<3' (the opcua extra)"
            ) from e
        # asyncua logs each lost connection and retry at error level with a traceback;
        # this source reports them once, through the runner and the stream's status
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
        o: Options = self.options
        self._lost = ""
        self._queue.clear()
        self._grid = AsOfGrid(len(o.channels), 1.0 / o.rate_hz)
        self._seen.clear()
        self._prime_until = time.monotonic() + o.timeout_s
        self._loop = LoopThread(f"opcua-{self.name}")
        try:
            self._loop.run(self._connect(), o.timeout_s * 3 + 5.0)
        except Exception as e:
            self.close()
            raise translate_error(o.url, e) from e
        self._meter.reset()
        if self._opened_before:
            self._next += 1  # a hole: the samples while disconnected are lost
        self._opened_before = True
        missing = [o.channels[i].name for i, n in enumerate(self._nodes) if n is None]
        log.info(
            "source %s: %s connected (%s, %s), %d nodes%s",
            self.name,
            o.url,
            o.mode,
            o.security_policy,
            len(o.channels),
            f", missing: {', '.join(missing)}" if missing else "",
        )

    def close(self) -> None:
        loop, client = self._loop, self._client
        self._loop = self._client = self._sub = None
        if loop is None:
            return
        if client is not None:
            with contextlib.suppress(Exception):  # the server may be gone already
                loop.run(client.disconnect(), 3.0)
        loop.stop()

    # -- read (runner thread) ------------------------------------------------------------

    def read(self, timeout: float) -> Block | None:
        if self._loop is None:
            raise SourceDisconnectedError(f"opcua {self.options.url}: not connected")
        if self.options.mode == "poll":
            return self._read_polled(timeout)
        deadline = time.monotonic() + timeout
        lag = (self.options.publishing_interval_ms + self.options.sampling_ms) / 1000.0 + 0.05
        while True:
            self._check_lost()
            self._drain_updates()
            got = self._grid.emit(time.time(), lag) if self._primed() else None
            if got is not None:
                n = len(got.rows)
                if got.gap_before:
                    self._next += 1
                    self.count("time_jumps")
                self._meter.add(time.monotonic(), n)
                blk = Block(got.rows, got.t0, self._next, self.rate_hz)
                self._next += n
                return blk
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(left, self._grid.period_s))

    def _read_polled(self, timeout: float) -> Block | None:
        self._check_lost()
        if not self._queue and not self._ready.wait(timeout):
            return None
        self._ready.clear()
        self._check_lost()
        rows: list[list[float]] = []
        t0 = 0.0
        while self._queue:
            row, ts = self._queue.popleft()
            if not rows:
                t0 = ts
            rows.append(row)
        if not rows:
            return None
        self._meter.add(time.monotonic(), len(rows))
        blk = Block(np.asarray(rows, dtype=np.float32), t0, self._next, self.rate_hz)
        self._next += len(rows)
        return blk

    def _check_lost(self) -> None:
        if self._lost:
            self.count("disconnects")
            raise SourceDisconnectedError(f"opcua {self.options.url}: {self._lost}")

    def _drain_updates(self) -> None:
        while self._queue:
            ch, value, ts, arrived = self._queue.popleft()
            self._grid.add(ch, value, ts, arrived)
            self._seen.add(ch)

    def _primed(self) -> bool:
        """The grid starts once every channel has its first value (a subscription sends
        each node's current value first) or was found missing, or after timeout_s: so a
        reconnect does not begin with rows of NaN."""
        if self._prime_until is None:
            return True
        if len(self._seen) == len(self.options.channels) or time.monotonic() > self._prime_until:
            self._prime_until = None
            return True
        return False

    def _enqueue(self, item: tuple[Any, ...]) -> None:
        if len(self._queue) >= QUEUE_ITEMS:
            with contextlib.suppress(IndexError):  # the reader emptied it meanwhile
                self._queue.popleft()
                self.count("dropped_updates")
        self._queue.append(item)
        self._ready.set()

    # -- the event loop thread -----------------------------------------------------------

    async def _connect(self) -> None:
        from asyncua.client.client import Client
        from asyncua.ua import CreateSubscriptionParameters

        o: Options = self.options
        client = Client(o.url, timeout=o.timeout_s, watchdog_intervall=min(1.0, o.timeout_s))
        client.session_timeout = 60_000
        if o.username:
            client.set_user(o.username)
            client.set_password(read_secret(o.password_file))
        if o.security_policy != "None":
            await self._secure(client)

        async def lost(exc: Exception) -> None:
            self._lost = f"connection lost: {exc}"
            self._ready.set()

        client.connection_lost_callback = lost
        await client.connect()
        self._client = client
        self._nodes = [await self._resolve(i) for i in range(len(o.channels))]
        if o.mode == "subscribe":
            params = CreateSubscriptionParameters(
                RequestedPublishingInterval=o.publishing_interval_ms,
                RequestedLifetimeCount=600,
                RequestedMaxKeepAliveCount=20,
            )
            self._sub = await client.create_subscription(params, self)
            self._handles.clear()
            self._by_node.clear()
            await self._subscribe([i for i, n in enumerate(self._nodes) if n is not None])
            asyncio.get_running_loop().create_task(self._node_check_loop())
        else:
            asyncio.get_running_loop().create_task(self._poll_loop())

    async def _secure(self, client: Any) -> None:
        o: Options = self.options
        await secure(
            client,
            url=o.url,
            mode=o.security_mode,
            certificate=o.certificate,
            private_key=o.private_key,
            server_certificate=o.server_certificate,
            application_uri=o.application_uri,
        )

    async def _resolve(self, i: int) -> Any:
        """The channel's node, or None (counted) when the server does not have it."""
        from asyncua.ua import uaerrors

        spec: NodeSpec = self.options.channels[i]
        try:
            if spec.node_id:
                node = self._client.get_node(spec.node_id)
            else:
                node = await self._client.nodes.objects.get_child(spec.browse_path.split("/"))
            dv = await node.read_data_value()
        except uaerrors.UaStatusCodeError as e:
            self._missing(i, type(e).__name__)
            return None
        except ValueError as e:  # a node id string that does not parse
            raise SourceError(
                f"opcua channel {spec.name!r}: bad node_id {spec.node_id!r}: {e}"
            ) from e
        if dv.StatusCode.name in _UNKNOWN:
            self._missing(i, dv.StatusCode.name)
            return None
        return node

    def _missing(self, i: int, why: str) -> None:
        name = self.options.channels[i].name
        self.count(f"node_missing:{name}")
        log.warning("source %s: node for channel %s not found (%s)", self.name, name, why)
        if self.options.mode == "subscribe":  # polled rows carry the NaN themselves
            now = time.time()
            self._enqueue((i, math.nan, now, now))

    async def _subscribe(self, channels: list[int]) -> None:
        if not channels:
            return
        from asyncua.ua.uatypes import StatusCode

        o: Options = self.options
        # queue the values sampled between two publishes, so none is lost
        queue = max(1, math.ceil(o.publishing_interval_ms / o.sampling_ms) + 1)
        nodes = [self._nodes[i] for i in channels]
        for i, n in zip(channels, nodes, strict=True):
            self._by_node[n.nodeid.to_string()] = i
        res = await self._sub.subscribe_data_change(
            nodes, queuesize=queue, sampling_interval=o.sampling_ms
        )
        for i, h in zip(channels, res, strict=True):
            if isinstance(h, StatusCode):
                self._nodes[i] = None
                self._missing(i, h.name)
            else:
                self._handles[i] = h

    async def _node_check_loop(self) -> None:
        """Look for missing nodes again; notice nodes deleted under a subscription
        (not every server reports that through the subscription itself)."""
        from asyncua.ua import uaerrors
        from asyncua.ua.attribute_ids import AttributeIds

        o: Options = self.options
        while True:
            await asyncio.sleep(o.node_check_s)
            present = [i for i, n in enumerate(self._nodes) if n is not None]
            if present:
                try:
                    dvs = await self._client.read_attributes(
                        [self._nodes[i] for i in present], AttributeIds.Value
                    )
                except (OSError, asyncio.TimeoutError, uaerrors.UaError):
                    continue  # the connection watchdog decides about the connection
                for i, dv in zip(present, dvs, strict=True):
                    if dv.StatusCode.name in _UNKNOWN:
                        await self._forget(i, dv.StatusCode.name)
            back = []
            for i, n in enumerate(self._nodes):
                if n is None:
                    node = await self._resolve_quietly(i)
                    if node is not None:
                        self._nodes[i] = node
                        back.append(i)
            if back:
                log.info(
                    "source %s: nodes back: %s",
                    self.name,
                    ", ".join(o.channels[i].name for i in back),
                )
                await self._subscribe(back)

    async def _resolve_quietly(self, i: int) -> Any:
        from asyncua.ua import uaerrors

        spec: NodeSpec = self.options.channels[i]
        try:
            if spec.node_id:
                node = self._client.get_node(spec.node_id)
            else:
                node = await self._client.nodes.objects.get_child(spec.browse_path.split("/"))
            dv = await node.read_data_value()
        except (uaerrors.UaError, ValueError):
            return None
        return None if dv.StatusCode.name in _UNKNOWN else node

    async def _forget(self, i: int, why: str) -> None:
        from asyncua.ua import uaerrors

        node, self._nodes[i] = self._nodes[i], None
        self._missing(i, why)
        self._by_node.pop(node.nodeid.to_string(), None)
        h = self._handles.pop(i, None)
        if h is not None:
            with contextlib.suppress(uaerrors.UaError, OSError, asyncio.TimeoutError):
                await self._sub.unsubscribe(h)

    async def _poll_loop(self) -> None:
        from asyncua.ua import uaerrors
        from asyncua.ua.attribute_ids import AttributeIds

        o: Options = self.options
        period = 1.0 / o.rate_hz
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        checked = loop.time()
        while True:
            present = [i for i, n in enumerate(self._nodes) if n is not None]
            row = [math.nan] * len(o.channels)
            # a value's source timestamp is when it last changed; a steady value was
            # still sampled now, so a sample is never older than its poll
            newest = time.time()
            if present:
                try:
                    dvs = await self._client.read_attributes(
                        [self._nodes[i] for i in present], AttributeIds.Value
                    )
                except (OSError, asyncio.TimeoutError, uaerrors.UaError) as e:
                    self._lost = f"read failed: {e!r}"
                    self._ready.set()
                    return
                for i, dv in zip(present, dvs, strict=True):
                    row[i] = self._value(i, dv)
                    if dv.SourceTimestamp is not None:
                        newest = max(newest, dv.SourceTimestamp.timestamp())
                for i, dv in zip(present, dvs, strict=True):
                    if dv.StatusCode.name in _UNKNOWN:
                        await self._forget(i, dv.StatusCode.name)
            self._enqueue((row, newest))
            if loop.time() - checked >= o.node_check_s:
                checked = loop.time()
                for i, n in enumerate(self._nodes):
                    if n is None and (node := await self._resolve_quietly(i)) is not None:
                        self._nodes[i] = node
            next_at += period
            delay = next_at - loop.time()
            if delay < -period:  # the server is slower than rate_hz: no burst to catch up
                next_at = loop.time()
            await asyncio.sleep(max(0.0, delay))

    def _value(self, i: int, dv: Any) -> float:
        """A DataValue as a float; NaN (counted) for a bad status or a non-number."""
        name = self.options.channels[i].name
        if not dv.StatusCode.is_good():
            self.count(f"bad_status:{name}:{dv.StatusCode.name}")
            return math.nan
        v = dv.Value.Value if dv.Value is not None else None
        if isinstance(v, (bool, int, float)):
            return float(v)
        self.count(f"bad_values:{name}")
        return math.nan

    # asyncua subscription handler (called on the loop thread)
    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        i = self._by_node.get(node.nodeid.to_string())
        if i is None:
            return
        dv = data.monitored_item.Value
        now = time.time()
        stamp = dv.SourceTimestamp or dv.ServerTimestamp
        ts = stamp.timestamp() if stamp is not None else now
        self._enqueue((i, self._value(i, dv), ts, now))

    def status_change_notification(self, status: Any) -> None:
        code = getattr(status, "Status", None)
        if code is not None and not code.is_good():
            self._lost = f"subscription ended: {code.name}"
            self._ready.set()


SOURCE_CLASS = OpcUaSource
