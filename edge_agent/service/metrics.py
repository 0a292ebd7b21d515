"""A small metrics registry and an optional Prometheus text endpoint (stdlib only).

Off unless `[metrics] enabled = true`; listens on loopback by default. The agent
either updates metrics as things happen (`inc`, `observe`, `set`) or, once per
status tick, copies its status dict in with `update_from_status()`; inference
latency is the one thing that needs `observe()` per batch.

Exposition: Prometheus text format 0.0.4, written by hand (no prometheus_client on
a gateway for a few dozen lines). Series per family are capped so a bug cannot
grow memory without bound.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_agent.config import MetricsConfig
from edge_agent.errors import MetricsError
from edge_agent.service.status import num

__all__ = [
    "AGENT_FAMILIES",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS_S",
    "MAX_SERIES_PER_FAMILY",
    "Family",
    "Kind",
    "Metrics",
    "MetricsServer",
    "start_metrics_server",
    "update_from_status",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_SERIES_PER_FAMILY = 256
# Inference on a Pi/Jetson: sub-millisecond (tiny int8 models) to seconds (cameras).
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Labels = tuple[str, ...]  # label values in the family's label order


class Kind(str, enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Family:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise MetricsError(f"metric name {self.name!r} is not a valid Prometheus name")
        for lab in self.labels:
            if not _LABEL.match(lab) or lab == "le":
                raise MetricsError(f"metric {self.name}: bad label name {lab!r}")
        if self.kind is Kind.HISTOGRAM and list(self.buckets) != sorted(set(self.buckets)):
            raise MetricsError(f"metric {self.name}: buckets must be strictly increasing")


AGENT_FAMILIES = (
    Family("edge_agent_info", Kind.GAUGE, "Always 1; labels carry version and device.",
           ("version", "device")),
    Family("edge_agent_ready", Kind.GAUGE, "1 when the agent is ready (READY=1 sent)."),
    Family("edge_agent_samples_total", Kind.COUNTER, "Samples read from the source.", ("stream",)),
    Family("edge_agent_windows_total", Kind.COUNTER, "Windows scored.", ("stream",)),
    Family("edge_agent_skipped_windows_total", Kind.COUNTER,
           "Windows not scored (pipeline behind).", ("stream",)),
    Family("edge_agent_dropped_blocks_total", Kind.COUNTER,
           "Source blocks dropped by the bounded queue.", ("stream",)),
    Family("edge_agent_source_restarts_total", Kind.COUNTER, "Source reopen attempts.",
           ("stream",)),
    Family("edge_agent_inference_seconds", Kind.HISTOGRAM, "Model inference time per batch.",
           ("stream",), LATENCY_BUCKETS_S),
    Family("edge_agent_alarms_total", Kind.COUNTER, "Anomaly alarms opened.", ("stream",)),
    Family("edge_agent_alarm_open", Kind.GAUGE, "1 while an alarm is open.", ("stream",)),
    Family("edge_agent_last_score", Kind.GAUGE, "Most recent anomaly score.", ("stream",)),
    Family("edge_agent_mqtt_connected", Kind.GAUGE, "1 while connected to the broker."),
    Family("edge_agent_outbox_depth", Kind.GAUGE, "Records waiting in the outbox."),
    Family("edge_agent_outbox_bytes", Kind.GAUGE, "Bytes used by waiting records."),
    Family("edge_agent_outbox_oldest_age_seconds", Kind.GAUGE, "Age of the oldest waiting record."),
    Family("edge_agent_outbox_drops_total", Kind.COUNTER,
           "Records dropped by the outbox disk budget.", ("kind",)),
)  # fmt: skip


class _Hist:
    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)  # last one: +Inf
        self.sum = 0.0


class Metrics:
    """Thread-safe registry of declared families. Unknown names and wrong labels raise
    MetricsError: a typo must fail a test, not silently create a new series."""

    def __init__(self, families: Iterable[Family] = AGENT_FAMILIES) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, Family] = {}
        self._values: dict[str, dict[Labels, float]] = {}
        self._hists: dict[str, dict[Labels, _Hist]] = {}
        for f in families:
            self.describe(f)

    def describe(self, family: Family) -> None:
        with self._lock:
            if family.name in self._families:
                raise MetricsError(f"metric {family.name} declared twice")
            self._families[family.name] = family
            self._values[family.name] = {}
            self._hists[family.name] = {}

    def _key(self, name: str, labels: Mapping[str, str] | None, kinds: tuple[Kind, ...]) -> Labels:
        fam = self._families.get(name)
        if fam is None:
            raise MetricsError(f"unknown metric {name!r}")
        if fam.kind not in kinds:
            raise MetricsError(f"metric {name} is a {fam.kind.value}")
        given = dict(labels or {})
        if set(given) != set(fam.labels):
            raise MetricsError(f"metric {name}: labels {sorted(given)} != {list(fam.labels)}")
        key = tuple(str(given[k]) for k in fam.labels)
        store = self._hists[name] if fam.kind is Kind.HISTOGRAM else self._values[name]
        if key not in store and len(store) >= MAX_SERIES_PER_FAMILY:
            raise MetricsError(f"metric {name}: more than {MAX_SERIES_PER_FAMILY} series")
        return key

    def inc(self, name: str, labels: Mapping[str, str] | None = None, value: float = 1.0) -> None:
        if value < 0:
            raise MetricsError(f"metric {name}: a counter cannot go down ({value})")
        with self._lock:
            key = self._key(name, labels, (Kind.COUNTER, Kind.GAUGE))
            self._values[name][key] = self._values[name].get(key, 0.0) + value

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Gauges: any value. Counters: a running total, which must not go down."""
        with self._lock:
            key = self._key(name, labels, (Kind.COUNTER, Kind.GAUGE))
            old = self._values[name].get(key, 0.0)
            if self._families[name].kind is Kind.COUNTER and value < old:
                raise MetricsError(f"metric {name}: counter went down from {old} to {value}")
            self._values[name][key] = float(value)

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            key = self._key(name, labels, (Kind.HISTOGRAM,))
            fam = self._families[name]
            h = self._hists[name].setdefault(key, _Hist(len(fam.buckets)))
            i = next((j for j, b in enumerate(fam.buckets) if value <= b), len(fam.buckets))
            h.counts[i] += 1
            h.sum += value

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for name, fam in self._families.items():
                out.append(f"# HELP {name} {_escape_help(fam.help)}")
                out.append(f"# TYPE {name} {fam.kind.value}")
                if fam.kind is Kind.HISTOGRAM:
                    for key, h in sorted(self._hists[name].items()):
                        out += _hist_lines(fam, key, h)
                else:
                    for key, v in sorted(self._values[name].items()):
                        out.append(f"{name}{_labels(fam.labels, key)} {_num(v)}")
        return "\n".join(out) + "\n"


def _escape_help(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Iterable[str], values: Iterable[str]) -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _num(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _hist_lines(fam: Family, key: Labels, h: _Hist) -> list[str]:
    lines = []
    cum = 0
    for b, c in zip((*fam.buckets, math.inf), h.counts, strict=True):
        cum += c
        le = _labels((*fam.labels, "le"), (*key, _num(b)))
        lines.append(f"{fam.name}_bucket{le} {cum}")
    lab = _labels(fam.labels, key)
    lines.append(f"{fam.name}_sum{lab} {_num(h.sum)}")
    lines.append(f"{fam.name}_count{lab} {cum}")
    return lines


def update_from_status(m: Metrics, st: Mapping[str, Any]) -> None:
    """Copy the agent's status dict (the status.json shape) into the agent families."""

    m.set("edge_agent_ready", 1.0 if st.get("ready") else 0.0)
    for s in st.get("streams") or []:
        lab = {"stream": str(s.get("name", "?"))}
        for fam, key in (
            ("edge_agent_samples_total", "samples"),
            ("edge_agent_windows_total", "windows"),
            ("edge_agent_skipped_windows_total", "skipped_windows"),
            ("edge_agent_dropped_blocks_total", "dropped_blocks"),
            ("edge_agent_source_restarts_total", "restarts"),
            ("edge_agent_alarms_total", "alarms"),
            ("edge_agent_last_score", "last_score"),
        ):
            v = num(s, key)
            if v is not None:
                m.set(fam, v, lab)
        m.set("edge_agent_alarm_open", 1.0 if s.get("alarm_open") else 0.0, lab)
    mq = st.get("mqtt")
    if isinstance(mq, Mapping) and mq.get("enabled"):
        m.set("edge_agent_mqtt_connected", 1.0 if mq.get("connected") else 0.0)
    ob = st.get("outbox")
    if isinstance(ob, Mapping):
        for fam, key in (
            ("edge_agent_outbox_depth", "depth"),
            ("edge_agent_outbox_bytes", "bytes"),
            ("edge_agent_outbox_oldest_age_seconds", "oldest_age_s"),
        ):
            v = num(ob, key)
            m.set(fam, v if v is not None else 0.0)
        drops = ob.get("drops")
        if isinstance(drops, Mapping):
            for kind in drops:
                v = num(drops, kind)
                if v is not None:
                    m.set("edge_agent_outbox_drops_total", v, {"kind": str(kind)})


class MetricsServer:
    """GET /metrics on a daemon thread. `port=0` picks a free port (see `.port`)."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9108) -> None:
        self.metrics = metrics
        registry = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = registry.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise MetricsError(f"metrics endpoint {host}:{port}: {e.strerror or e}") from e
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        if not _is_loopback(host):
            log.warning("metrics endpoint listens on %s: reachable from the network", host)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self._server.server_address[0], self.port)
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def restart(self) -> None:
        """Serve again after the serving thread ended on its own (same socket)."""
        if not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="metrics-http", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=timeout)
        self._server.server_close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def start_metrics_server(cfg: MetricsConfig, metrics: Metrics) -> MetricsServer | None:
    """The endpoint if `cfg.enabled`, started; else None. Raises MetricsError if the
    address cannot be bound (port taken)."""
    if not cfg.enabled:
        return None
    return MetricsServer(metrics, cfg.host, cfg.port).start()
