"""paho without ssl and urllib.request until used (edge_agent/reporting/paho_lean.py).

Each case runs in a fresh interpreter: the test process has loaded ssl long before (the
test subscriber, the TLS fixtures), and a stand-in is only placed for a module not yet
loaded. The link runs against real mosquitto brokers, plain and mTLS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.mosquitto import Broker, TlsFiles, free_port

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]

# The reporter as the agent builds it, in a child that has not imported ssl. Writes
# what it saw as JSON to argv[1]; argv[2] is the config (JSON), argv[3] a state dir,
# argv[4] how many events to publish.
CHILD = """
import json, sys, time
import edge_agent.reporting.link
import paho.mqtt.client as pc
from edge_agent.config import parse_config
from edge_agent.reporting import Reporter

out, cfg, state, n = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
seen = {"stand_in": type(pc.ssl).__name__, "before": sorted(
    m for m in ("ssl", "urllib.request", "http.client", "email") if m in sys.modules)}
r = Reporter(parse_config(cfg), state, birth=lambda: {"profile": "test", "models": []})
r.start()
try:
    for i in range(n):
        r.publish_event({"event": "start", "stream": f"s{i}"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        snap = r.snapshot()
        if n and snap["outbox"]["depth"] == 0 and snap["mqtt"]["connected"]:
            break
        if not n and snap["mqtt"]["last_error"]:
            break
        time.sleep(0.05)
    seen["snap"] = r.snapshot()
finally:
    r.stop()
seen["after"] = sorted(
    m for m in ("ssl", "urllib.request", "http.client", "email") if m in sys.modules)
open(out, "w").write(json.dumps(seen, default=str))
"""


def _run_child(tmp_path: Path, mqtt: dict[str, object], events: int) -> dict[str, Any]:
    out = tmp_path / "seen.json"
    cfg = {
        "device_id": "gw-lean",
        "mqtt": {"reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "keepalive_s": 5, **mqtt},
    }
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), json.dumps(cfg), str(tmp_path / "state"),
         str(events)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    seen: dict[str, Any] = json.loads(out.read_text())
    return seen


def test_plain_tcp_delivers_a_burst_without_loading_ssl_or_urllib_request(
    broker: Broker, tmp_path: Path
) -> None:
    # 300 QoS 1 events, every PUBACK read; the except clauses around paho's reads and
    # writes are checked against a raised error in the stand-in test below
    seen = _run_child(tmp_path, {"host": broker.host, "port": broker.port}, 300)
    assert seen["stand_in"] == "DeferredModule"
    assert seen["before"] == [], seen
    snap = seen["snap"]
    assert snap["outbox"]["depth"] == 0, snap
    assert seen["after"] == [], seen


def test_refused_connection_is_described_without_loading_ssl(tmp_path: Path) -> None:
    seen = _run_child(tmp_path, {"host": "127.0.0.1", "port": free_port()}, 0)
    snap = seen["snap"]
    assert "cannot connect to" in str(snap["mqtt"]["last_error"]), snap
    assert seen["after"] == [], seen


def _tls(files: TlsFiles, ca: Path) -> dict[str, object]:
    return {
        "enabled": True,
        "ca_file": str(ca),
        "cert_file": str(files.client_cert),
        "key_file": str(files.client_key),
    }


def test_mutual_tls_delivers_through_the_stand_in(
    tls_broker: Broker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    mqtt = {"host": tls_broker.host, "port": tls_broker.port, "tls": _tls(tls_files, tls_files.ca)}
    seen = _run_child(tmp_path, mqtt, 50)
    assert seen["stand_in"] == "DeferredModule"
    snap = seen["snap"]
    assert snap["mqtt"]["connected"], snap
    assert snap["outbox"]["depth"] == 0, snap
    assert "ssl" in seen["after"]  # the link imported it to configure TLS


def test_a_wrong_ca_is_still_described_as_a_tls_failure(
    tls_broker: Broker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    mqtt = {
        "host": tls_broker.host,
        "port": tls_broker.port,
        "tls": _tls(tls_files, tls_files.other_ca),
    }
    seen = _run_child(tmp_path, mqtt, 0)
    err = str(seen["snap"]["mqtt"]["last_error"])
    assert "TLS handshake" in err, err
    assert "certificate verify failed" in err, err


STAND_IN = """
import sys
import edge_agent.reporting.paho_lean as lean
import paho.mqtt.client as pc
assert "ssl" not in sys.modules and "urllib.request" not in sys.modules
# no SSL socket can exist yet: the clause's class matches nothing, and ssl stays out
assert issubclass(pc.ssl.SSLWantReadError, Exception)
assert pc.ssl.SSLWantReadError.__name__ == "_NeverRaisedError", pc.ssl.SSLWantReadError
assert "ssl" not in sys.modules
try:
    raise BlockingIOError()
except pc.ssl.SSLWantReadError:
    raise AssertionError("matched")
except BlockingIOError:
    pass
# any other name imports the real module, which every later import then gets
ctx = pc.ssl.create_default_context()
import ssl
assert sys.modules["ssl"] is ssl and isinstance(ctx, ssl.SSLContext)
assert pc.ssl.SSLWantReadError is ssl.SSLWantReadError
assert pc.ssl.SSLWantWriteError is ssl.SSLWantWriteError
# paho's proxy lookup reads urllib.request through the package
assert isinstance(pc.urllib.request.getproxies(), dict)
import urllib.request
assert pc.urllib.request.getproxies is urllib.request.getproxies
assert type(sys.modules["urllib.request"]) is not lean.DeferredModule
print("ok")
"""


def test_stand_ins_forward_to_the_real_modules_once_loaded() -> None:
    p = subprocess.run(
        [sys.executable, "-c", STAND_IN],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok", p.stdout
