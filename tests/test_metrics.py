"""The Prometheus endpoint: scraped over real HTTP on loopback and parsed with
prometheus_client's own parser, from a status dict and from a real agent process."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.config import MetricsConfig
from edge_agent.errors import MetricsError
from edge_agent.service.metrics import (
    CONTENT_TYPE,
    Metrics,
    MetricsServer,
    start_metrics_server,
    update_from_status,
)
from edge_agent.service.metrics_families import FAMILIES, MAX_SERIES_PER_FAMILY
from tests.agentutil import MODELS, REPO

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples by (name, labels), and the type of each family, as Prometheus reads them."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


STATUS: dict[str, Any] = {
    "v": 1,
    "agent_version": "0.1.0",
    "device_id": 'gw-"01"',
    "profile": {"name": "rpi5"},
    "started_at": 1000.0,
    "written_at": 1099.5,
    "running": True,
    "ready": True,
    "pid": os.getpid(),
    "health": {"live": True, "ready": True},
    "supervisor": {"components": [{"name": "reporting", "restarts": 2, "state": "running"}]},
    "streams": [
        {
            "name": "press-3",
            "source_kind": "modbus",
            "source_state": "running",
            "samples": 32000,
            "windows": 2000,
            "skipped_windows": 3,
            "dropped_blocks": 1,
            "restarts": 0,
            "disconnects": 4,
            "alarms": 5,
            "alarm_open": True,
            "last_score": 0.12,
            "threshold": 0.09,
            "rate_hz_configured": 100.0,
            "rate_hz_measured": 99.5,
            "error": "",
            "counters": {"polls": 32000, "exception:holding:14:device_busy": 7},
            "sensor_health": {"active": ["stuck:vib_x", "stuck:vib_y", "rate"]},
            "model": {
                "name": "vibration-ae-int8-onnx",
                "version": 3,
                "backend": "onnx",
                "precision": "int8",
                "inference": {
                    "buckets_s": [0.001, 0.01, 0.1],
                    "counts": [5, 2, 0, 1],
                    "sum_s": 2.75,
                },
            },
        }
    ],
    "mqtt": {"enabled": True, "connected": True, "reconnects": 3},
    "outbox": {"depth": 12, "bytes": 4096, "oldest_age_s": 30.5, "drops": {"telemetry": 4}},
    "ota": {"state": "shadow", "active_version": 3},
}


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(Metrics(), "127.0.0.1", 0).start()
    yield srv
    srv.stop()


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode(), r.headers["Content-Type"]


def test_scrape_over_http_reports_the_status(server: MetricsServer) -> None:
    update_from_status(server.metrics, STATUS)
    text, ctype = scrape(server.port)
    assert ctype == CONTENT_TYPE
    s, types = parse(text)
    assert types["edge_agent_windows"] == "counter"  # the parser drops _total
    assert types["edge_agent_inference_seconds"] == "histogram"
    assert s[key("edge_agent_info", version="0.1.0", device='gw-"01"', profile="rpi5")] == 1
    assert s[key("edge_agent_ready")] == 1
    st = {"stream": "press-3"}
    assert s[key("edge_agent_windows_total", **st)] == 2000
    assert s[key("edge_agent_samples_total", **st)] == 32000
    assert s[key("edge_agent_source_disconnects_total", **st)] == 4
    assert s[key("edge_agent_threshold", **st)] == 0.09
    assert s[key("edge_agent_last_score", **st)] == 0.12
    assert s[key("edge_agent_alarm_open", **st)] == 1
    assert s[key("edge_agent_source_state", state="running", **st)] == 1
    assert s[key("edge_agent_source_state", state="reconnecting", **st)] == 0
    assert s[key("edge_agent_source_rate_hz", rate="measured", **st)] == 99.5
    counter = "exception:holding:14:device_busy"
    assert s[key("edge_agent_source_counter_total", counter=counter, **st)] == 7
    assert s[key("edge_agent_sensor_faults", kind="stuck", **st)] == 2  # two channels
    assert s[key("edge_agent_sensor_faults", kind="rate", **st)] == 1
    assert s[key("edge_agent_sensor_faults", kind="non_finite", **st)] == 0
    model = {"model": "vibration-ae-int8-onnx"}
    assert s[key("edge_agent_model_version", backend="onnx", precision="int8", **st, **model)] == 3
    b = "edge_agent_inference_seconds_bucket"
    assert s[key(b, le="0.001", **model)] == 5
    assert s[key(b, le="0.01", **model)] == 7  # cumulative
    assert s[key(b, le="0.1", **model)] == 7
    assert s[key(b, le="+Inf", **model)] == 8
    assert s[key("edge_agent_inference_seconds_count", **model)] == 8
    assert s[key("edge_agent_inference_seconds_sum", **model)] == 2.75
    assert s[key("edge_agent_component_restarts_total", component="reporting")] == 2
    assert s[key("edge_agent_mqtt_connected")] == 1
    assert s[key("edge_agent_mqtt_reconnects_total")] == 3
    assert s[key("edge_agent_outbox_depth")] == 12
    assert s[key("edge_agent_outbox_oldest_age_seconds")] == 30.5
    assert s[key("edge_agent_outbox_drops_total", kind="telemetry")] == 4
    assert s[key("edge_agent_ota_phase", phase="shadow")] == 1


def test_health_verdict_is_the_one_status_prints() -> None:
    m = Metrics()
    now = time.time()
    ok = copy.deepcopy(STATUS)
    ok.update(started_at=now - 100, written_at=now)
    ok["streams"][0]["sensor_health"] = {"active": []}
    update_from_status(m, ok)
    s, _ = parse(m.render().decode())
    assert s[key("edge_agent_health", verdict="OK")] == 1
    assert s[key("edge_agent_health", verdict="DEGRADED")] == 0
    broken = copy.deepcopy(ok)
    broken["streams"][0].update(source_state="failed", error="restart budget exhausted")
    update_from_status(m, broken)
    s, _ = parse(m.render().decode())
    assert s[key("edge_agent_health", verdict="OK")] == 0
    assert s[key("edge_agent_health", verdict="DEGRADED")] == 1


def test_nothing_before_the_first_status_and_other_paths_are_404(server: MetricsServer) -> None:
    text, _ = scrape(server.port)
    assert not [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    with pytest.raises(urllib.error.HTTPError) as e:
        scrape(server.port, "/")
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


def test_series_per_family_are_bounded() -> None:
    st = copy.deepcopy(STATUS)
    st["streams"][0]["counters"] = {f"node_missing:n{i}": 1 for i in range(1000)}
    m = Metrics()
    update_from_status(m, st)
    s, _ = parse(m.render().decode())
    n = sum(1 for name, _ in s if name == "edge_agent_source_counter_total")
    assert n == MAX_SERIES_PER_FAMILY


def _documented() -> list[str]:
    doc = (REPO / "docs" / "metrics.md").read_text()
    return re.findall(r"^\| `(edge_agent_[a-z_]+)` \|", doc, flags=re.MULTILINE)


def test_docs_list_exactly_the_families_the_agent_exposes() -> None:
    assert _documented() == [f.name for f in FAMILIES]


# -- a real agent: every documented family carries samples after a demo run ----------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _exposed_names(name: str, kind: str) -> set[str]:
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def test_demo_run_every_documented_family_has_samples(tmp_path: Path) -> None:
    # the demo stream, plus a replayed file with one bad row: a source that counts
    rows = ["vib_x,vib_y,vib_z,current"]
    rows += [
        ",".join(f"{math.sin(0.1 * i + k):.4f}" for k in range(4)) if i != 7 else "x,y,z,w"
        for i in range(400)
    ]
    csv = tmp_path / "press.csv"
    csv.write_text("\n".join(rows) + "\n")
    port = _free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
device_id = "gw-metrics"
models_dir = "{MODELS}"

[mqtt]
enabled = false

[metrics]
enabled = true
port = {port}

[logging]
format = "plain"

[[streams]]
name = "replayed"
model = "vibration-ae"

[streams.source]
kind = "replay"
path = "{csv}"
rate_hz = 100.0
loop = true
"""
    )
    state = tmp_path / "state"
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--demo", "--config", str(cfg),
             "--state-dir", str(state)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")},
        )  # fmt: skip
    want = {f.name: _exposed_names(f.name, f.kind) for f in FAMILIES}
    missing: list[str] = sorted(want)
    samples: Samples = {}
    try:
        deadline = time.monotonic() + 90
        while missing and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
            try:
                text, _ = scrape(port)
            except (urllib.error.URLError, ConnectionError):
                continue  # not listening yet
            samples, _ = parse(text)
            names = {n for n, _ in samples}
            missing = [f for f, exposed in want.items() if not exposed <= names]
            if not missing and not samples.get(key("edge_agent_windows_total", stream="demo")):
                missing = ["(no window scored yet)"]
        assert not missing, f"documented families without samples: {missing}"
        infer = [v for (n, _), v in samples.items() if n == "edge_agent_inference_seconds_count"]
        assert sum(infer) > 0  # latency really recorded
        bad = key("edge_agent_source_counter_total", stream="replayed", counter="bad_rows")
        assert samples[bad] >= 1
        st = json.loads((state / "status.json").read_text())
        assert st["streams"][0]["model"]["inference"]["counts"]
    finally:
        proc.terminate()
        proc.wait(30)
