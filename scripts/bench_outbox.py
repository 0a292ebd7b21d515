"""Outbox + link vs publishing straight through paho at QoS 1, side by side in one run.

    python scripts/bench_outbox.py [--records 5000] [--rate 1000] [--seconds 5]

Starts its own mosquitto on a free loopback port. Measures (1) records/s drained:
(a) N payloads published directly with paho QoS 1 until every PUBACK arrived, (b) the
same N payloads pre-spooled in the outbox and drained by the link; also (b') ingest +
drain together (every record fsync'd before publish_event returns). (2) sample-to-
subscriber latency p50/p99 at a steady rate, for both paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edge_agent.config import parse_config  # noqa: E402
from edge_agent.reporting import Reporter  # noqa: E402
from tests.mosquitto import Broker  # noqa: E402

PAD = "x" * 120  # a realistic event body size (~250 bytes with the envelope)


class Sink:
    """Subscriber recording receive time minus the sample time carried in the payload."""

    def __init__(self, port: int, topic: str) -> None:
        self.lat: list[float] = []
        self.count = 0
        self._lock = threading.Lock()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sink-{topic}")
        ready = threading.Event()
        c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert ready.wait(10)
        self.c = c

    def _on_message(self, c: Any, u: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        t0 = json.loads(msg.payload).get("t0")
        with self._lock:
            self.count += 1
            if t0 is not None:
                self.lat.append(now - t0)

    def reset(self) -> None:
        with self._lock:
            self.lat, self.count = [], 0

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def direct_client(port: int) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="direct", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(20)  # same window as the agent's default
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def direct_throughput(port: int, n: int) -> float:
    c = direct_client(port)
    infos = []
    t = time.perf_counter()
    for i in range(n):
        body = {"v": 1, "device": "gw-01", "seq": i + 1, "ts": time.time(), "i": i, "pad": PAD}
        infos.append(c.publish("bench/direct", json.dumps(body), qos=1))
    for info in infos:
        info.wait_for_publish(30)
    dt = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return n / dt


def make_reporter(port: int, state: Path) -> Reporter:
    cfg = parse_config({"device_id": "gw-01", "mqtt": {"host": "127.0.0.1", "port": port}})
    return Reporter(cfg, state, birth=lambda: {"profile": "bench"})


def wait_drained(r: Reporter, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while r.snapshot()["outbox"]["depth"] > 0 and time.monotonic() < deadline:
        time.sleep(0.002)


def outbox_drain_throughput(port: int, n: int, state: Path) -> tuple[float, float]:
    r = make_reporter(port, state)
    t = time.perf_counter()
    for i in range(n):
        r.publish_event({"i": i, "pad": PAD})
    ingest = n / (time.perf_counter() - t)
    t = time.perf_counter()
    r.start()
    wait_drained(r)
    drain = n / (time.perf_counter() - t)
    r.stop()
    return drain, ingest


def outbox_end_to_end(port: int, n: int, state: Path) -> float:
    r = make_reporter(port, state)
    r.start()
    while not r.snapshot()["mqtt"]["connected"]:
        time.sleep(0.01)
    wait_drained(r)
    t = time.perf_counter()
    for i in range(n):
        r.publish_event({"i": i, "pad": PAD})
    wait_drained(r)
    rate = n / (time.perf_counter() - t)
    r.stop()
    return rate


def steady(publish: Any, rate: float, seconds: float) -> None:
    period = 1.0 / rate
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        target = start + i * period
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        publish(i)


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] * 1000 if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    broker = Broker(tmp / "broker")
    broker.start()
    try:
        sink_d = Sink(broker.port, "bench/direct")
        sink_o = Sink(broker.port, "edge/gw-01/events")
        d_rate = direct_throughput(broker.port, args.records)
        o_drain, o_ingest = outbox_drain_throughput(broker.port, args.records, tmp / "s1")
        o_e2e = outbox_end_to_end(broker.port, args.records, tmp / "s2")

        sink_d.reset()
        c = direct_client(broker.port)
        steady(
            lambda i: c.publish(
                "bench/direct", json.dumps({"t0": time.time(), "i": i, "pad": PAD}), qos=1
            ),
            args.rate,
            args.seconds,
        )
        time.sleep(0.5)
        c.disconnect()
        c.loop_stop()
        lat_d = list(sink_d.lat)

        sink_o.reset()
        r = make_reporter(broker.port, tmp / "s3")
        r.start()
        while not r.snapshot()["mqtt"]["connected"]:
            time.sleep(0.01)
        steady(
            lambda i: r.publish_event({"t0": time.time(), "i": i, "pad": PAD}),
            args.rate,
            args.seconds,
        )
        wait_drained(r)
        time.sleep(0.3)
        r.stop()
        lat_o = list(sink_o.lat)
        sink_d.close()
        sink_o.close()
    finally:
        broker.stop()

    print(f"records={args.records}  steady rate={args.rate:.0f}/s for {args.seconds:.0f} s")
    print(f"(a) direct paho QoS 1       : {d_rate:9.0f} records/s")
    print(f"(b) outbox drain (spooled)  : {o_drain:9.0f} records/s  b/a = {o_drain / d_rate:.2f}")
    print(f"(b) outbox ingest (fsync)   : {o_ingest:9.0f} records/s")
    print(f"(b) ingest+drain end to end : {o_e2e:9.0f} records/s   ratio = {o_e2e / d_rate:.2f}")
    print(
        f"latency direct  p50 {pct(lat_d, 50):6.2f} ms  p99 {pct(lat_d, 99):6.2f} ms"
        f"  (received {len(lat_d)})"
    )
    print(
        f"latency outbox  p50 {pct(lat_o, 50):6.2f} ms  p99 {pct(lat_o, 99):6.2f} ms"
        f"  (received {len(lat_o)})"
    )
    print(f"p99 ratio outbox/direct = {pct(lat_o, 99) / pct(lat_d, 99):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
