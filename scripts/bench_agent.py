"""The agent as a process: cold start to READY, RSS, sample-to-subscriber latency, swap pause.

    python scripts/bench_agent.py [--repeats 5] [--latency-seconds 30] [--json OUT]

Everything runs against a mosquitto this script starts on a free loopback port.
- cold start: spawn `python -m edge_agent run --demo` with $NOTIFY_SOCKET set to a
  datagram socket of ours; time from spawn to the READY=1 datagram (median of runs).
- RSS: the same process, after it has scored for a while: VmHWM (peak) and VmRSS from
  /proc/<pid>/status, one model loaded.
- sample-to-subscriber latency: 8 synthetic streams paced in real time (100 Hz, one
  block per hop), alarm threshold set at the normal-score median with min_on/min_off 1
  so that alarms start and end often (a steady event load); a subscriber takes its
  receive time minus the event's sample time (`t_start` on start events, `t_end` on
  end events: the last sample of the window that changed state).
- swap pause: a StreamPipeline scoring at full speed in one thread while the main
  thread swaps models (fp32 <-> int8) every 20 ms; the longest gap between scored
  batches around swaps vs without swaps.
Also used by scripts/bench_peers.py, which puts these figures beside the peers'.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
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

from edge_agent.measure.benchstats import LatencySummary  # noqa: E402
from tests.mosquitto import Broker  # noqa: E402
from tests.notify_socket import NotifySocket  # noqa: E402

READY_TIMEOUT_S = 30.0
LATENCY_STREAMS = 8
SWAP_EVERY_S = 0.02


def _config(path: Path, port: int, state: Path, *, streams: int = 0) -> Path:
    lines = [
        'device_id = "bench-gw"',
        f'state_dir = "{state}"',
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "telemetry_interval_s = 60",
    ]
    for i in range(streams):
        lines += [
            "[[streams]]",
            f'name = "s{i}"',
            'model = "vibration-ae"',
            f'source = {{ kind = "synthetic", seed = {i + 1}, block = 16, anomalies = false }}',
            # threshold at the normal-score median (model card: ~0.026): alarms flip often
            "alarm = { threshold = 0.026, min_on = 1, min_off = 1, hysteresis = 1.0 }",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _agent_cmd(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg), *extra]


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0])  # kB
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cold_start_and_rss(port: int, work: Path, repeats: int, settle_s: float) -> dict[str, Any]:
    """Spawn -> READY=1, then RSS after `settle_s` of real-time scoring; per run."""
    ready_s, hwm, rss = [], [], []
    for i in range(repeats):
        state = work / f"cold{i}"
        cfg = _config(work / f"cold{i}.toml", port, state)
        sock = NotifySocket(work / f"notify{i}")
        env = {**os.environ, "NOTIFY_SOCKET": sock.address}
        t0 = time.monotonic()
        proc = subprocess.Popen(
            _agent_cmd(cfg, "--demo"),
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            sock.wait_for("READY", READY_TIMEOUT_S)
            t_ready = next(t for t, m in sock.messages if "READY" in m)
            ready_s.append(t_ready - t0)
            time.sleep(settle_s)
            st = _proc_status(proc.pid)
            hwm.append(st["VmHWM"] / 1024)
            rss.append(st["VmRSS"] / 1024)
        finally:
            _stop(proc)
            sock.close()
    return {
        "cold_start_to_ready_s": {"median": statistics.median(ready_s), "runs": ready_s},
        "rss_peak_mb": {"median": statistics.median(hwm), "runs": hwm},
        "rss_now_mb": {"median": statistics.median(rss), "runs": rss},
        "settle_s": settle_s,
    }


class _EventSink:
    def __init__(self, port: int, topic: str) -> None:
        self.lat: list[float] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sink")
        c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("subscriber did not connect")
        self.c = c

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        body = json.loads(msg.payload)
        t = body.get("t_end", body.get("t_start"))
        if t is not None:
            with self._lock:
                self.lat.append(now - t)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def subscriber_latency(port: int, work: Path, seconds: float, repeats: int) -> dict[str, Any]:
    runs = []
    for i in range(repeats):
        state = work / f"lat{i}"
        cfg = _config(work / f"lat{i}.toml", port, state, streams=LATENCY_STREAMS)
        sink = _EventSink(port, "edge/bench-gw/events")
        proc = subprocess.Popen(
            _agent_cmd(cfg, "--duration", str(seconds)),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(seconds + 60)
        finally:
            if proc.poll() is None:
                _stop(proc)
        time.sleep(0.5)  # the last PUBACKed records reach the subscriber
        sink.close()
        lat_ms = [x * 1e3 for x in sink.lat[20:]]  # skip the connect/birth burst
        s = LatencySummary.of(lat_ms)
        runs.append({"events": s.n, "p50_ms": s.p50, "p99_ms": s.p99, "max_ms": s.max})
    return {
        "streams": LATENCY_STREAMS,
        "seconds": seconds,
        "events_per_s": statistics.median(r["events"] for r in runs) / seconds,
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "runs": runs,
    }


def swap_pause(seconds: float) -> dict[str, Any]:
    """Longest gap between scored batches while models are swapped, vs without swaps."""
    from edge_agent.pipeline.alarms import AlarmPolicy
    from edge_agent.pipeline.stream import StreamPipeline
    from edge_agent.runtime.model import load_model
    from edge_agent.sources.base import Block
    from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal

    models = ROOT / "models"
    a = load_model(models / "vibration-ae-fp32-onnx")
    b = load_model(models / "vibration-ae-int8-onnx")
    pre = a.card.preprocessing
    samples = SyntheticSignal(SignalSpec(seed=1)).render(0, 200_000)

    def run(swapping: bool) -> tuple[list[float], list[float]]:
        pipe = StreamPipeline(
            "swap", a, AlarmPolicy(a.card.threshold), window=pre.window, hop=pre.hop
        )
        stamps: list[float] = []
        pipe.shadow = lambda _w, _s, _m: stamps.append(time.perf_counter())
        stop = threading.Event()

        def feed() -> None:
            i = 0
            while not stop.is_set():
                j = i % (len(samples) - pre.hop)
                pipe.process(Block(samples[j : j + pre.hop], 0.0, i, 100.0))
                i += pre.hop

        t = threading.Thread(target=feed)
        t.start()
        swaps: list[float] = []
        end = time.perf_counter() + seconds
        models_ = (b, a)
        k = 0
        while time.perf_counter() < end:
            time.sleep(SWAP_EVERY_S)
            if swapping:
                t0 = time.perf_counter()
                pipe.swap_model(models_[k % 2])
                swaps.append(time.perf_counter() - t0)
                k += 1
        stop.set()
        t.join()
        gaps = [(y - x) * 1e6 for x, y in itertools.pairwise(stamps)]
        return gaps, [s * 1e6 for s in swaps]

    base_gaps, _ = run(False)
    gaps, swaps = run(True)
    return {
        "seconds": seconds,
        "swaps": len(swaps),
        "swap_call_us": {"p50": statistics.median(swaps), "max": max(swaps)},
        "gap_us_without_swaps": {"p50": statistics.median(base_gaps), "max": max(base_gaps)},
        "gap_us_with_swaps": {"p50": statistics.median(gaps), "max": max(gaps)},
        "batches_with_swaps": len(gaps) + 1,
    }


def run_all(repeats: int, latency_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as d:
        work = Path(d)
        broker = Broker(work / "broker")
        broker.start()
        try:
            out = cold_start_and_rss(broker.port, work, repeats, settle_s=3.0)
            out["subscriber_latency"] = subscriber_latency(
                broker.port, work, latency_seconds, max(1, repeats // 2)
            )
        finally:
            broker.stop()
    out["swap_pause"] = swap_pause(3.0)
    return out


def print_report(r: dict[str, Any]) -> None:
    c, p, n = r["cold_start_to_ready_s"], r["rss_peak_mb"], len(r["rss_peak_mb"]["runs"])
    print(f"cold start to READY: {c['median']:.2f} s median of {n} (runs {_fmt(c['runs'])})")
    print(
        f"agent RSS, one model: peak {p['median']:.1f} MB median (runs {_fmt(p['runs'])}); "
        f"now {r['rss_now_mb']['median']:.1f} MB after {r['settle_s']:g} s scoring"
    )
    s = r["subscriber_latency"]
    print(
        f"sample-to-subscriber latency, {s['streams']} streams, {s['events_per_s']:.0f} "
        f"events/s: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms "
        f"(median of {len(s['runs'])} runs of {s['seconds']:g} s)"
    )
    w = r["swap_pause"]
    print(
        f"model swap: {w['swaps']} swaps, swap_model() p50 {w['swap_call_us']['p50']:.0f} us "
        f"max {w['swap_call_us']['max']:.0f} us; longest gap between scored batches "
        f"{w['gap_us_with_swaps']['max']:.0f} us with swaps vs "
        f"{w['gap_us_without_swaps']['max']:.0f} us without (p50 "
        f"{w['gap_us_with_swaps']['p50']:.0f} vs {w['gap_us_without_swaps']['p50']:.0f} us)"
    )


def _fmt(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()
    r = run_all(args.repeats, args.latency_seconds)
    print_report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
