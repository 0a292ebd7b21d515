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

    python scripts/bench_agent.py --latency [--latency-streams 16] [--sync always]
        [--latency-seconds 30] [--repeats 3] [--baseline-root DIR]

Only the sample-to-subscriber latency above (issue 15's goal: 16 real-time streams, the
outbox fsyncing every commit, p99 < 20 ms), with the agent's CPU share; with
--baseline-root, another checkout's agent in the same run, one after the other.

    python scripts/bench_agent.py --matrix [--streams 1,16,64] [--blocks 1,16,1024]
        [--seconds 3] [--json OUT]

The agent as users run it (issue 15): the real `edge-agent run` process with N
synthetic streams of the demo model and block sizes B, at max speed (windows/s, CPU
seconds, windows per CPU-second) and in real time at 100 Hz (CPU share of one core,
blocks dropped), each beside raw batched onnxruntime (`session.run` on batches of 256
windows, one thread) measured in the same run: the ratio is the agent's windows per
CPU-second over the raw runtime's. Also RSS with one ONNX and one TFLite model, and
cold start to READY. Counts are read from status.json (written every second) between
READY + 1 s and the end of the measured interval; CPU from /proc/<pid>/stat.

    python scripts/bench_agent.py --scaling 64 [--pairs 8] [--seconds 3] [--block 1024]
                                  [--turn-costs]
        [--source replay]

Whether more streams lower total throughput (issue 15): 1 stream and N streams at max
speed, alternated pair after pair (the order flips each pair), each pair's ratio of
total windows/s; the median and spread over the pairs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
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
STAGES_HOOK = ROOT / "scripts" / "latency_stages"  # a sitecustomize that times the stages
TURNS_HOOK = ROOT / "scripts" / "turn_costs"  # a sitecustomize that records each turn's CPU
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edge_agent.measure.benchstats import LatencySummary  # noqa: E402
from tests.mosquitto import Broker  # noqa: E402
from tests.notify_socket import NotifySocket  # noqa: E402

READY_TIMEOUT_S = 30.0
LATENCY_STREAMS = 8
SWAP_EVERY_S = 0.02


def _config(
    path: Path, port: int, state: Path, *, streams: int = 0, sync: str | None = None
) -> Path:
    lines = [
        'device_id = "bench-gw"',
        f'state_dir = "{state}"',
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "telemetry_interval_s = 60",
    ]
    if sync is not None:  # the outbox's fsync policy ("always" is the default)
        lines += ["[outbox]", f'sync = "{sync}"']
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


def _with_hook(env: dict[str, str], hook: Path) -> dict[str, str]:
    """`env` with the sitecustomize folder `hook` first on PYTHONPATH."""
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(hook), env.get("PYTHONPATH", "")) if x)
    return env


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
        # the deciding sample's time (the last sample of the window that changed state)
        t = body.get("t_sample", body.get("t_end", body.get("t_start")))
        if t is not None:
            with self._lock:
                self.lat.append(now - t)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def subscriber_latency(
    port: int,
    work: Path,
    seconds: float,
    repeats: int,
    *,
    streams: int = LATENCY_STREAMS,
    sync: str | None = None,
    root: Path = ROOT,
) -> dict[str, Any]:
    """Sample-to-subscriber latency of events from `streams` real-time streams (the
    checkout at `root`), median of `repeats` runs; also the agent's CPU share."""
    return _latency_summary(
        [
            _latency_run(port, work, seconds, streams=streams, sync=sync, root=root)
            for _ in range(repeats)
        ],
        streams=streams,
        sync=sync,
        seconds=seconds,
        root=root,
    )


def _latency_run(
    port: int,
    work: Path,
    seconds: float,
    *,
    streams: int,
    sync: str | None,
    root: Path,
    stages: bool = False,
) -> dict[str, Any]:
    """One run of subscriber_latency; with `stages`, also the agent's per-stage timing
    (scripts/latency_stages)."""
    tag = f"lat{len(list(work.iterdir()))}"
    state = work / tag
    cfg = _config(work / f"{tag}.toml", port, state, streams=streams, sync=sync)
    sink = _EventSink(port, "edge/bench-gw/events")
    env = None
    stage_dir = work / f"{tag}-stages"
    if stages:
        stage_dir.mkdir()
        env = _with_hook(dict(os.environ), STAGES_HOOK)
        env["EDGE_AGENT_LATENCY_STAGES"] = str(stage_dir)
    proc = subprocess.Popen(
        _agent_cmd(cfg, "--duration", str(seconds)),
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cpu = 0.0
    try:
        # CPU read just before the end (a process that exited has no /proc entry)
        end = time.monotonic() + seconds - 0.5
        while time.monotonic() < end and proc.poll() is None:
            cpu = _cpu_s(proc.pid)
            time.sleep(0.2)
        proc.wait(seconds + 60)
    finally:
        if proc.poll() is None:
            _stop(proc)
    time.sleep(0.5)  # the last PUBACKed records reach the subscriber
    sink.close()
    lat_ms = [x * 1e3 for x in sink.lat[20:]]  # skip the connect/birth burst
    s = LatencySummary.of(lat_ms)
    out: dict[str, Any] = {
        "events": s.n,
        "p50_ms": s.p50,
        "p99_ms": s.p99,
        "max_ms": s.max,
        "cpu_share": cpu / seconds,
    }
    if stages:
        found = sorted(stage_dir.glob("stages-*.json"))
        out["stages"] = json.loads(found[0].read_text()) if found else {}
    return out


def _latency_summary(
    runs: list[dict[str, Any]], *, streams: int, sync: str | None, seconds: float, root: Path
) -> dict[str, Any]:
    return {
        "agent": "baseline" if root != ROOT else "this",
        "streams": streams,
        "sync": sync or "always (default)",
        "seconds": seconds,
        "events_per_s": statistics.median(r["events"] for r in runs) / seconds,
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "max_ms": statistics.median(r["max_ms"] for r in runs),
        "runs": runs,
        "stages": _stage_medians(runs),
    }


def _stage_medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each stage's p50/p90/p99/max: the median over the runs that measured it."""
    names: list[str] = []
    for r in runs:
        names += [k for k in r.get("stages", {}) if k not in names]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        got = [r["stages"][name] for r in runs if name in r.get("stages", {})]
        out[name] = {q: statistics.median(g[q] for g in got) for q in ("p50", "p90", "p99", "max")}
    return out


def run_latency(
    streams: int,
    seconds: float,
    repeats: int,
    sync: str,
    baseline: Path | None,
    *,
    stages: bool = False,
) -> dict[str, Any]:
    """--latency: this checkout's agent (and `baseline`'s), run after run, one broker."""
    out: dict[str, Any] = {"runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as d:
        work = Path(d)
        broker = Broker(work / "broker")
        broker.start()
        try:
            # the two checkouts take turns, run after run: a change in the machine's load
            # during the measurement falls on both alike
            roots = [ROOT] if baseline is None else [baseline, ROOT]
            runs: dict[Path, list[dict[str, Any]]] = {r: [] for r in roots}
            for _ in range(repeats):
                for root in roots:
                    runs[root].append(
                        _latency_run(
                            broker.port,
                            work,
                            seconds,
                            streams=streams,
                            sync=sync,
                            root=root,
                            stages=stages,
                        )
                    )
            for root in roots:
                r = _latency_summary(
                    runs[root], streams=streams, sync=sync, seconds=seconds, root=root
                )
                out["runs"].append(r)
                _print_latency(r)
        finally:
            broker.stop()
    return out


def _print_latency(r: dict[str, Any]) -> None:
    runs = r["runs"]
    print(
        f"{r['agent']:8} sample-to-subscriber, {r['streams']} real-time streams, outbox sync "
        f"{r['sync']}, {r['events_per_s']:.0f} events/s: p50 {r['p50_ms']:.1f} ms, p99 "
        f"{r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms (median of {len(runs)} runs of "
        f"{r['seconds']:g} s; p99 per run {_fmt([x['p99_ms'] for x in runs])}; CPU "
        f"{statistics.median(x['cpu_share'] for x in runs) * 100:.1f}% of a core)",
        flush=True,
    )
    for name, q in r["stages"].items():
        print(
            f"         stage {name:20} p50 {q['p50']:6.2f}  p90 {q['p90']:6.2f}  "
            f"p99 {q['p99']:6.2f}  max {q['max']:6.2f} ms",
            flush=True,
        )


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


# -- the agent as users run it (--matrix) ------------------------------------------------
MATRIX_VARIANT = "int8-onnx"  # what the demo serves on x86 (the profile's precision)
RAW_BATCH = 256
MATRIX_QUEUE_BLOCKS = 8


SOURCES = ("synthetic", "replay")
REPLAY_SAMPLES = 200_000


def _replay_file(work: Path) -> Path:
    """The demo signal as a .npy file (replayed in a loop): a source that costs almost
    nothing per sample, so the agent's own work is what is timed."""
    import numpy as np

    from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal

    f = work / "signal.npy"
    if not f.exists():
        np.save(f, SyntheticSignal(SignalSpec(seed=1, anomalies=False)).render(0, REPLAY_SAMPLES))
    return f


def _source(kind: str, work: Path, i: int, block: int, speed: float) -> str:
    if kind == "replay":
        from edge_agent.sources.synth_signal import CHANNELS

        cols = ", ".join(f'"{c}"' for c in CHANNELS)
        return (
            f'{{ kind = "replay", path = "{_replay_file(work)}", columns = [{cols}], '
            f"rate_hz = 100.0, block = {block}, speed = {speed}, loop = true }}"
        )
    return (
        f'{{ kind = "synthetic", seed = {i + 1}, block = {block}, speed = {speed}, '
        "anomalies = false }"
    )


def _stream_config(
    path: Path,
    port: int,
    state: Path,
    *,
    streams: int,
    block: int,
    speed: float,
    variant: str,
    source: str = "synthetic",
) -> Path:
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
            f'variant = "{variant}"',
            # a generated source prefetches at most this many blocks: 256 blocks of 1,024
            # samples x 64 streams would spend the measured seconds filling queues
            f"queue_blocks = {MATRIX_QUEUE_BLOCKS}",
            f"source = {_source(source, path.parent, i, block, speed)}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _status(state: Path) -> dict[str, Any]:
    for _ in range(50):  # written by rename: a read never sees half a file, but may race
        try:
            data: dict[str, Any] = json.loads((state / "status.json").read_text())
            return data
        except (OSError, ValueError):
            time.sleep(0.05)
    raise RuntimeError(f"no status.json in {state}")


def raw_batched(variant: str, seconds: float = 1.5) -> dict[str, float]:
    """onnxruntime alone: session.run on batches of RAW_BATCH windows, one thread."""
    import numpy as np
    import onnxruntime as ort

    from edge_agent.runtime.card import load_card

    card = load_card(ROOT / "models" / f"vibration-ae-{variant}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(card.path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [RAW_BATCH, *(int(d) for d in card.input.shape[1:] if d is not None)]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if "int8" in inp.type:
        x = np.clip(
            np.rint(x / (card.input.scale or 1.0)) + (card.input.zero_point or 0), -128, 127
        )
        x = x.astype(np.uint8 if "uint8" in inp.type else np.int8)
    for _ in range(20):
        sess.run(None, {inp.name: x})
    n, w0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        sess.run(None, {inp.name: x})
        n += RAW_BATCH
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "windows_per_s": n / wall,
        "windows_per_cpu_s": n / cpu,
        "us_per_window": wall / n * 1e6,
    }


def agent_run(
    port: int,
    work: Path,
    *,
    streams: int,
    block: int,
    speed: float,
    seconds: float,
    variant: str,
    root: Path = ROOT,
    source: str = "synthetic",
    turn_costs: bool = False,
) -> dict[str, Any]:
    """One real agent process (the checkout at `root`): counts and CPU between READY +
    1 s and `seconds` later. `turn_costs`: also the CPU a window costs in the run's
    quiet turns (scripts/turn_costs)."""
    tag = f"n{streams}-b{block}-{'max' if speed == 0 else 'rt'}-{len(list(work.iterdir()))}"
    state = work / tag
    cfg = _stream_config(
        work / f"{tag}.toml",
        port,
        state,
        streams=streams,
        block=block,
        speed=speed,
        variant=variant,
        source=source,
    )
    sock = NotifySocket(work / f"notify-{tag}")
    # as under systemd with WatchdogSec=2: WATCHDOG=1 due every second
    env = {**os.environ, "NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "2000000"}
    turns_file = work / f"{tag}-turns.json"
    if turn_costs:
        env = _with_hook(env, TURNS_HOOK)
        env["EDGE_AGENT_TURN_COSTS"] = str(turns_file)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        _agent_cmd(cfg), env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        sock.wait_for("READY", READY_TIMEOUT_S)
        ready_s = next(t for t, m in sock.messages if "READY" in m) - t0
        # from the first status written a second after READY (one read at READY + 1 s
        # could still find the one written at READY, counting the streams' start)
        s0 = _status_after(state, sock, time.time() + 1.0, proc)
        c0, w0 = _cpu_s(proc.pid), time.monotonic()
        s1 = _status_after(state, sock, s0["written_at"] + seconds, proc)
        c1, w1 = _cpu_s(proc.pid), time.monotonic()
        rss = _proc_status(proc.pid)
    finally:
        _stop(proc)
        sock.close()
    pings = [t for t, m in sock.messages if m.get("WATCHDOG") == "1" and t0 + ready_s <= t <= w1]
    gaps = [b - a for a, b in itertools.pairwise([t0 + ready_s, *pings, w1])]
    windows = s1["windows_total"] - s0["windows_total"]
    dropped = sum(s["dropped_blocks"] for s in s1["streams"])
    samples = sum(s["samples"] for s in s1["streams"]) - sum(s["samples"] for s in s0["streams"])
    cpu, wall = c1 - c0, w1 - w0
    # the counts are the status writes' own: per second of the time between those writes
    # (a busier agent writes a little later; our reads' wall time would flatter it ~1%)
    counted = s1["written_at"] - s0["written_at"]
    if counted <= 0:
        counted = wall
    return {
        "agent": "baseline" if root != ROOT else "this",
        "source": source,
        "streams": streams,
        "block": block,
        "mode": "max-speed" if speed == 0 else "real-time",
        "ready_s": ready_s,
        "windows": windows,
        "windows_per_s": windows / counted,
        "samples_per_s": samples / counted,
        "cpu_share": cpu / wall,  # of one core
        # windows per second of the status interval over CPU per second of ours
        "windows_per_cpu_s": windows / counted / (cpu / wall) if cpu > 0 else 0.0,
        "dropped_blocks": dropped,
        "rss_mb": rss["VmRSS"] / 1024,
        "watchdog_max_gap_s": max(gaps),  # due every 1 s; systemd kills at 2 s
        **({"turn_ns_per_window": _window_costs(turns_file)} if turn_costs else {}),
    }


def _window_costs(path: Path) -> dict[str, float]:
    """CPU ns a window costs: `quiet_turns`, in the run's quiet turns (of the turns after
    the first second, the median of the cheapest 40% per window), and `outside`, the
    process's CPU outside the turns over those seconds (status, supervision, MQTT, the
    scheduler's worker) per window. The host slows the whole VM for seconds at a time
    (every phase of a turn, onnxruntime's run too, ~1.5-1.8x); its quiet stretches show
    what the turns cost, and the rest is counted whole."""
    import numpy as np

    nan = {"quiet_turns": float("nan"), "outside": float("nan")}
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):  # the agent was killed before its exit hook ran
        return nan
    at, cpu, win, proc = (
        np.asarray(d[k], dtype=np.float64) for k in ("at_s", "cpu_s", "windows", "process_cpu_s")
    )
    keep = at > 1.0
    if keep.sum() < 3:
        return nan
    cpu, win, proc = cpu[keep], win[keep], proc[keep]
    per = cpu / win
    quiet = per[per <= np.percentile(per, 40)]
    # from the first kept turn's start to the last's: the turns in between, all of them
    outside = (proc[-1] - proc[0]) - cpu[:-1].sum()
    return {
        "quiet_turns": float(np.median(quiet) * 1e9),
        "outside": float(max(outside, 0.0) / win[:-1].sum() * 1e9),
    }


def _status_after(
    state: Path, sock: NotifySocket, wall: float, proc: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """The first status written at or after `wall` (epoch seconds; the agent writes one
    a second), taking the notify messages meanwhile."""
    while True:
        s = _status(state)
        if s["written_at"] >= wall:
            return s
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited ({proc.returncode}) while measured")
        if time.time() > wall + 10.0:
            raise RuntimeError(f"no status written after {wall:.2f} in {state} (agent hung?)")
        _listen(sock, min(0.05, max(0.02, wall - time.time())))


def _listen(sock: NotifySocket, seconds: float) -> None:
    """Take the agent's notify messages as they come (each is timed when received)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.drain(timeout=min(0.05, left))


def rss_one_model(port: int, work: Path, variant: str, settle_s: float = 2.0) -> dict[str, float]:
    """RSS of the agent serving one real-time stream of `variant`; cold start to READY."""
    r = agent_run(port, work, streams=1, block=16, speed=1.0, seconds=settle_s, variant=variant)
    return {"rss_mb": r["rss_mb"], "ready_s": r["ready_s"]}


def run_matrix(
    streams: list[int],
    blocks: list[int],
    seconds: float,
    variant: str,
    *,
    baseline: Path | None = None,
    source: str = "synthetic",
) -> dict[str, Any]:
    out: dict[str, Any] = {"variant": variant, "seconds": seconds, "source": source, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as d:
        work = Path(d)
        broker = Broker(work / "broker")
        broker.start()
        try:
            out["raw"] = raw_batched(variant)
            roots = [ROOT] if baseline is None else [baseline, ROOT]
            plan = [(n, b, 0.0) for n in streams for b in blocks]
            plan += [(n, b, 1.0) for n in [x for x in streams if x > 1] or streams for b in blocks]
            for n, b, speed in plan:
                if speed and b > 16:
                    continue  # one 1,024-sample block every 10 s: nothing to see in seconds
                for root in roots:  # side by side, one configuration after the other
                    r = agent_run(
                        broker.port,
                        work,
                        streams=n,
                        block=b,
                        speed=speed,
                        seconds=seconds,
                        variant=variant,
                        root=root,
                        source=source,
                    )
                    if not speed:
                        r["ratio_per_cpu_s"] = (
                            r["windows_per_cpu_s"] / out["raw"]["windows_per_cpu_s"]
                        )
                    out["runs"].append(r)
                    _print_run(r)
            out["rss_onnx"] = rss_one_model(broker.port, work, variant)
            out["rss_tflite"] = rss_one_model(broker.port, work, "int8-tflite")
        finally:
            broker.stop()
    return out


def run_scaling(
    streams: int,
    pairs: int,
    seconds: float,
    variant: str,
    *,
    block: int,
    source: str,
    turn_costs: bool = False,
) -> dict[str, Any]:
    """--scaling: 1 stream and `streams` streams at max speed, alternated `pairs` times
    (the order flips each pair), each pair's ratio of total windows/s (and windows per
    CPU-second). One stream alone moved 0.65-0.96 M windows/s between runs minutes apart
    on this VM: only ratios of runs seconds apart, many of them, say whether more
    streams lower the total."""
    out: dict[str, Any] = {
        "variant": variant,
        "seconds": seconds,
        "source": source,
        "block": block,
        "streams": streams,
        "pairs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as d:
        work = Path(d)
        broker = Broker(work / "broker")
        broker.start()
        try:
            for i in range(pairs):
                got: dict[int, dict[str, Any]] = {}
                for n in (1, streams) if i % 2 == 0 else (streams, 1):
                    got[n] = agent_run(
                        broker.port,
                        work,
                        streams=n,
                        block=block,
                        speed=0.0,
                        seconds=seconds,
                        variant=variant,
                        source=source,
                        turn_costs=turn_costs,
                    )
                one, many = got[1], got[streams]
                pair = {
                    "one_rss_mb": one["rss_mb"],
                    "many_rss_mb": many["rss_mb"],
                    "one_windows_per_s": one["windows_per_s"],
                    "many_windows_per_s": many["windows_per_s"],
                    "ratio": many["windows_per_s"] / one["windows_per_s"],
                    "ratio_per_cpu_s": many["windows_per_cpu_s"] / one["windows_per_cpu_s"],
                    "dropped": one["dropped_blocks"] + many["dropped_blocks"],
                }
                quiet = ""
                if turn_costs:
                    o, m = one["turn_ns_per_window"], many["turn_ns_per_window"]
                    pair["one_ns"], pair["many_ns"] = o, m
                    pair["window_cost_ratio"] = (m["quiet_turns"] + m["outside"]) / (
                        o["quiet_turns"] + o["outside"]
                    )
                    quiet = (
                        f"; CPU a window: quiet turns {o['quiet_turns']:.0f} / "
                        f"{m['quiet_turns']:.0f} ns + outside the turns {o['outside']:.0f} / "
                        f"{m['outside']:.0f} ns (x{pair['window_cost_ratio']:.3f})"
                    )
                out["pairs"].append(pair)
                print(
                    f"pair {i + 1}: 1 stream {pair['one_windows_per_s']:,.0f} windows/s, "
                    f"{streams} streams {pair['many_windows_per_s']:,.0f}: ratio "
                    f"{pair['ratio']:.2f} ({pair['ratio_per_cpu_s']:.2f} per CPU-s); RSS "
                    f"{pair['one_rss_mb']:.1f} / {pair['many_rss_mb']:.1f} MB{quiet}",
                    flush=True,
                )
        finally:
            broker.stop()
    ratios = sorted(p["ratio"] for p in out["pairs"])
    out["ratio_median"] = statistics.median(ratios)
    out["ratio_per_cpu_s_median"] = statistics.median(p["ratio_per_cpu_s"] for p in out["pairs"])
    print(
        f"{streams} streams / 1 stream, total windows/s, {source} blocks of {block}: median "
        f"{out['ratio_median']:.2f} of {len(ratios)} pairs (min {ratios[0]:.2f}, max "
        f"{ratios[-1]:.2f}; {sum(r >= 1.0 for r in ratios)} of {len(ratios)} >= 1); per "
        f"CPU-s median {out['ratio_per_cpu_s_median']:.2f}",
        flush=True,
    )
    if turn_costs:
        costs = sorted(c for p in out["pairs"] if math.isfinite(c := p["window_cost_ratio"]))
        if not costs:
            return out
        out["window_cost_ratio_median"] = statistics.median(costs)
        print(
            f"CPU a window (quiet turns + outside them), {streams} streams / 1 stream: median "
            f"{out['window_cost_ratio_median']:.3f} (min {costs[0]:.3f}, max {costs[-1]:.3f}; "
            "below 1: more streams cost less a window)",
            flush=True,
        )
    return out


def _print_run(r: dict[str, Any]) -> None:
    ratio = (
        f", {r['ratio_per_cpu_s'] * 100:.1f}% of raw per CPU-s" if "ratio_per_cpu_s" in r else ""
    )
    print(
        f"{r['agent']:8} {r['source']:9} {r['mode']:9} {r['streams']:3} streams x block "
        f"{r['block']:5}: "
        f"{r['windows_per_s']:9,.0f} windows/s, CPU {r['cpu_share'] * 100:5.1f}% of a core, "
        f"{r['windows_per_cpu_s']:9,.0f} windows/CPU-s{ratio}; dropped {r['dropped_blocks']}, "
        f"READY {r['ready_s']:.2f} s, WATCHDOG gap <= {r['watchdog_max_gap_s']:.2f} s, "
        f"RSS {r['rss_mb']:.1f} MB",
        flush=True,
    )


def print_matrix(m: dict[str, Any]) -> None:
    raw = m["raw"]
    print(
        f"raw batched onnxruntime ({m['variant']}, batch {RAW_BATCH}, 1 thread): "
        f"{raw['windows_per_s']:,.0f} windows/s, {raw['windows_per_cpu_s']:,.0f} windows/CPU-s "
        f"({raw['us_per_window']:.2f} us/window)"
    )
    for key, what in (("rss_onnx", m["variant"]), ("rss_tflite", "int8-tflite")):
        r = m[key]
        print(
            f"one {what} stream: RSS {r['rss_mb']:.1f} MB, cold start to READY {r['ready_s']:.2f} s"
        )


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
    ap.add_argument("--matrix", action="store_true", help="N streams x block sizes (issue 15)")
    ap.add_argument(
        "--latency",
        action="store_true",
        help="only sample-to-subscriber latency: --latency-streams real-time streams, "
        "outbox sync --sync, --repeats runs of --latency-seconds (issue 15)",
    )
    ap.add_argument("--latency-streams", type=int, default=16, help="--latency: streams")
    ap.add_argument("--sync", choices=("always", "normal"), default="always")
    ap.add_argument(
        "--stages",
        action="store_true",
        help="--latency: also time the agent's stages (scripts/latency_stages; adds a "
        "little work to the agent)",
    )
    ap.add_argument(
        "--scaling",
        type=int,
        metavar="N",
        help="1 stream and N streams at max speed, alternated --pairs times: the ratio of "
        "total windows/s per pair (issue 15: more streams never lower total throughput)",
    )
    ap.add_argument("--pairs", type=int, default=8, help="--scaling: pairs of runs")
    ap.add_argument("--block", type=int, default=1024, help="--scaling: block size")
    ap.add_argument(
        "--turn-costs",
        action="store_true",
        help="--scaling: also the CPU a window costs in each run's quiet turns "
        "(scripts/turn_costs), which the host's slow stretches do not move",
    )
    ap.add_argument("--streams", default="1,16,64", help="--matrix: stream counts")
    ap.add_argument("--blocks", default="1,16,1024", help="--matrix: block sizes")
    ap.add_argument("--seconds", type=float, default=3.0, help="--matrix: measured per run")
    ap.add_argument("--variant", default=MATRIX_VARIANT, help="--matrix: demo model variant")
    ap.add_argument(
        "--source",
        choices=SOURCES,
        default="synthetic",
        help="--matrix: the demo generator, or the same signal replayed from a .npy file",
    )
    ap.add_argument(
        "--baseline-root",
        help="--matrix, --latency: also run this checkout's agent beside ours (e.g. an older "
        "commit unpacked with `git archive REV | tar -x -C DIR`)",
    )
    args = ap.parse_args()
    if args.latency:
        r = run_latency(
            args.latency_streams,
            args.latency_seconds,
            args.repeats,
            args.sync,
            Path(args.baseline_root) if args.baseline_root else None,
            stages=args.stages,
        )
    elif args.scaling:
        r = run_scaling(
            args.scaling,
            args.pairs,
            args.seconds,
            args.variant,
            block=args.block,
            source=args.source,
            turn_costs=args.turn_costs,
        )
    elif args.matrix:
        r = run_matrix(
            [int(x) for x in args.streams.split(",")],
            [int(x) for x in args.blocks.split(",")],
            args.seconds,
            args.variant,
            baseline=Path(args.baseline_root) if args.baseline_root else None,
            source=args.source,
        )
        print_matrix(r)
    else:
        r = run_all(args.repeats, args.latency_seconds)
        print_report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
