"""The optional Prometheus endpoint: prometheus_client over the agent's status snapshot.

Off unless `[metrics] enabled = true`; listens on loopback by default. Once per status
tick the agent hands its status dict to `update_from_status()`; a scrape runs a
prometheus_client collector over the latest one (metrics_families.py), so the endpoint
and `edge-agent status` read the same numbers and nothing in the hot path updates
metrics. prometheus_client is imported only when the endpoint is enabled.

Families and labels: docs/metrics.md.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from edge_agent.config import MetricsConfig
from edge_agent.errors import MetricsError

if TYPE_CHECKING:  # http.server (with email, socketserver): only when the endpoint is on
    from http.server import ThreadingHTTPServer

__all__ = [
    "CONTENT_TYPE",
    "Metrics",
    "MetricsServer",
    "start_metrics_server",
    "update_from_status",
]

log = logging.getLogger(__name__)

# The Prometheus text format prometheus_client's generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The latest status snapshot, for the collector. Thread-safe: the status tick
    writes it, scrapes read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: Mapping[str, Any] | None = None
        self._registry: Any = None

    def update(self, status: Mapping[str, Any]) -> None:
        with self._lock:
            self._status = status

    def status(self) -> Mapping[str, Any] | None:
        with self._lock:
            return self._status

    def collect(self) -> Iterator[Any]:
        """prometheus_client's Collector protocol: the families for the latest status."""
        from edge_agent.service.metrics_families import families

        st = self.status()
        if st is not None:
            yield from families(st, time.time())

    def render(self) -> bytes:
        """The exposition text of the latest status (what a scrape returns)."""
        from prometheus_client.exposition import generate_latest

        with self._lock:
            if self._registry is None:
                from prometheus_client.registry import CollectorRegistry

                # no default process/platform collectors: only what the agent documents
                self._registry = CollectorRegistry(auto_describe=False)
                self._registry.register(self)
            registry = self._registry
        out: bytes = generate_latest(registry)
        return out


def update_from_status(m: Metrics, st: Mapping[str, Any]) -> None:
    """Hand the agent's status dict (the status.json shape) to the endpoint."""
    m.update(st)


class MetricsServer:
    """GET /metrics on a daemon thread. `port=0` picks a free port (see `.port`)."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9108) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.metrics = metrics
        registry = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                try:
                    body = registry.render()
                except Exception:  # a bad snapshot must not take the endpoint down
                    log.exception("metrics: rendering failed")
                    self.send_error(500, "rendering failed (see the agent's log)")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        try:
            self._server: ThreadingHTTPServer = ThreadingHTTPServer((host, port), Handler)
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
    address cannot be bound (port taken), or if prometheus_client is missing."""
    if not cfg.enabled:
        return None
    try:
        import prometheus_client  # noqa: F401 - fail at start, not at the first scrape
    except ImportError as e:
        raise MetricsError(
            "[metrics] enabled needs prometheus-client (pip install prometheus-client)"
        ) from e
    return MetricsServer(metrics, cfg.host, cfg.port).start()
