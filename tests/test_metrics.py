"""Metrics registry and the Prometheus endpoint, scraped over real HTTP on loopback."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from edge_agent.config import MetricsConfig
from edge_agent.errors import MetricsError
from edge_agent.service.metrics import (
    CONTENT_TYPE,
    MAX_SERIES_PER_FAMILY,
    Family,
    Kind,
    Metrics,
    MetricsServer,
    start_metrics_server,
    update_from_status,
)

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[tuple[str, frozenset[tuple[str, str]]], float], dict[str, str]]:
    """Parse the exposition text strictly: every line is a comment or a sample."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        samples[(m.group(1), labels)] = float(m.group(4))
    return samples, types


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(Metrics(), "127.0.0.1", 0).start()
    yield srv
    srv.stop()


def scrape(srv: MetricsServer, path: str = "/metrics") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=5) as r:
        return r.read().decode(), r.headers["Content-Type"]


def test_scrape_over_http_reports_what_the_agent_counted(server: MetricsServer) -> None:
    m = server.metrics
    m.set("edge_agent_info", 1, {"version": "0.1.0", "device": 'gw-"01"'})
    for _ in range(3):
        m.inc("edge_agent_windows_total", {"stream": "demo"})
    m.inc("edge_agent_alarms_total", {"stream": "demo"})
    for v in (0.0004, 0.003, 0.003, 0.2, 7.0):
        m.observe("edge_agent_inference_seconds", v, {"stream": "demo"})
    m.set("edge_agent_outbox_depth", 12)
    m.set("edge_agent_outbox_drops_total", 4, {"kind": "telemetry"})
    text, ctype = scrape(server)
    assert ctype == CONTENT_TYPE
    samples, types = parse(text)
    assert types["edge_agent_windows_total"] == "counter"
    assert types["edge_agent_inference_seconds"] == "histogram"
    assert samples[key("edge_agent_windows_total", stream="demo")] == 3
    assert samples[key("edge_agent_alarms_total", stream="demo")] == 1
    assert samples[key("edge_agent_outbox_depth")] == 12
    assert samples[key("edge_agent_outbox_drops_total", kind="telemetry")] == 4
    assert samples[key("edge_agent_info", version="0.1.0", device='gw-\\"01\\"')] == 1
    b = "edge_agent_inference_seconds_bucket"
    assert samples[key(b, stream="demo", le="0.0005")] == 1
    assert samples[key(b, stream="demo", le="0.005")] == 3  # cumulative
    assert samples[key(b, stream="demo", le="0.25")] == 4
    assert samples[key(b, stream="demo", le="2.5")] == 4
    assert samples[key(b, stream="demo", le="+Inf")] == 5
    assert samples[key("edge_agent_inference_seconds_count", stream="demo")] == 5
    assert samples[key("edge_agent_inference_seconds_sum", stream="demo")] == pytest.approx(7.2064)


def test_other_paths_are_404(server: MetricsServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape(server, "/")
    assert e.value.code == 404
    e.value.close()


def test_off_unless_enabled_and_port_in_use_is_a_clear_error() -> None:
    assert start_metrics_server(MetricsConfig(enabled=False), Metrics()) is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsError, match=f"127.0.0.1:{port}"):
            start_metrics_server(MetricsConfig(enabled=True, port=port), Metrics())


def test_misuse_fails_loudly() -> None:
    m = Metrics()
    with pytest.raises(MetricsError, match="unknown metric"):
        m.inc("edge_agent_windwos_total", {"stream": "a"})
    with pytest.raises(MetricsError, match="labels"):
        m.inc("edge_agent_windows_total", {"strem": "a"})
    with pytest.raises(MetricsError, match="histogram"):
        m.inc("edge_agent_inference_seconds", {"stream": "a"})
    m.set("edge_agent_windows_total", 10, {"stream": "a"})
    with pytest.raises(MetricsError, match="went down"):
        m.set("edge_agent_windows_total", 9, {"stream": "a"})
    with pytest.raises(MetricsError, match="cannot go down"):
        m.inc("edge_agent_windows_total", {"stream": "a"}, -1)
    with pytest.raises(MetricsError, match="not a valid"):
        Family("bad-name", Kind.GAUGE, "x")


def test_series_per_family_are_bounded() -> None:
    m = Metrics()
    for i in range(MAX_SERIES_PER_FAMILY):
        m.inc("edge_agent_windows_total", {"stream": f"s{i}"})
    with pytest.raises(MetricsError, match="series"):
        m.inc("edge_agent_windows_total", {"stream": "one-too-many"})


def test_update_from_status_copies_the_status_dict() -> None:
    m = Metrics()
    st = {
        "ready": True,
        "streams": [
            {"name": "demo", "samples": 32000, "windows": 2000, "alarms": 5, "alarm_open": True,
             "last_score": 0.12, "dropped_blocks": 1, "skipped_windows": 0, "restarts": 2},
        ],
        "mqtt": {"enabled": True, "connected": False},
        "outbox": {"depth": 7, "bytes": 900, "oldest_age_s": None, "drops": {"telemetry": 3}},
    }  # fmt: skip
    update_from_status(m, st)
    samples, _ = parse(m.render())
    assert samples[key("edge_agent_ready")] == 1
    assert samples[key("edge_agent_windows_total", stream="demo")] == 2000
    assert samples[key("edge_agent_samples_total", stream="demo")] == 32000
    assert samples[key("edge_agent_alarm_open", stream="demo")] == 1
    assert samples[key("edge_agent_last_score", stream="demo")] == 0.12
    assert samples[key("edge_agent_mqtt_connected")] == 0
    assert samples[key("edge_agent_outbox_depth")] == 7
    assert samples[key("edge_agent_outbox_oldest_age_seconds")] == 0
    assert samples[key("edge_agent_outbox_drops_total", kind="telemetry")] == 3
