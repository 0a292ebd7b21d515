"""Fleet view and idle cost: `edge-ota fleet status` time for N retained devices, and what
one idle agent costs the broker per hour.

    python scripts/bench_fleet.py status [--devices 50,5000] [--repeats 3] [--json OUT]

Starts a mosquitto with its default limits (only a loopback listener and anonymous access
set) on a free port, publishes N simulated devices as retained messages only (status +
the four state sections, as real agents send them: 5 topics per device), then runs the
real CLI `python -m ota fleet status --json` as a subprocess (Python start included) and
reports the median wall time, how reading ended, and that every device was seen.

    python scripts/bench_fleet.py idle [--agents 10] [--minutes 5] [--json OUT]

Starts N real `edge-agent run` processes (1 Hz synthetic stream, default config apart
from the broker) against one mosquitto, lets them settle for 60 s, then counts every
message and payload byte the broker receives from them for `--minutes` with a wildcard
subscriber, and reports messages and bytes per device per hour, plus each agent's RSS and
CPU share over the interval.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broker(d: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _port()
    conf = d / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    p = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def _device_messages(i: int, now: float) -> list[tuple[str, dict[str, Any]]]:
    d = f"sim-{i:05d}"
    env = {"v": 1, "device": d, "seq": 1, "ts": now}
    group = f"line-{i % 10}"
    return [
        (f"edge/{d}/status", {**env, "state": "online", "agent_version": "0.1.0",
                              "models": [{"stream": "s", "name": "vib", "version": 3}]}),
        (f"edge/{d}/state/health", {**env, "group": group, "verdict": "OK", "reasons": [],
                                    "agent_version": "0.1.0", "heartbeat_s": 300.0}),
        (f"edge/{d}/state/models", {**env, "streams": [{"stream": "s", "family": "vib",
         "model": "vib-int8", "version": 3, "slot": "slot a", "calibration": "none"}]}),
        (f"edge/{d}/state/ota", {**env, "enabled": True, "phase": "idle", "target": None,
         "active_version": 3, "active_slot": "a", "last_result": "committed v3",
         "last": {"outcome": "committed", "version": 3, "reason": None}, "note": ""}),
        (f"edge/{d}/state/alarms", {**env, "streams": [{"stream": "s", "open": False,
                                                        "sensor_faults": []}]}),
    ]  # fmt: skip


def _populate(port: int, n: int) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-populate")
    c.max_inflight_messages_set(500)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    now = time.time()
    infos = []
    for i in range(n):
        for topic, body in _device_messages(i, now):
            infos.append(c.publish(topic, json.dumps(body), qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def bench_status(devices: list[int], repeats: int) -> list[dict[str, Any]]:
    out = []
    for n in devices:
        with tempfile.TemporaryDirectory() as tmp:
            proc, port = _broker(Path(tmp))
            try:
                _populate(port, n)
                times, seen, how = [], 0, ""
                for _ in range(repeats):
                    t0 = time.monotonic()
                    p = subprocess.run(
                        [sys.executable, "-m", "ota", "fleet", "status", "--json",
                         "--port", str(port)],
                        capture_output=True, text=True, cwd=REPO, check=True, timeout=300,
                    )  # fmt: skip
                    times.append(time.monotonic() - t0)
                    doc = json.loads(p.stdout)
                    seen, how = len(doc["devices"]), doc["read"]["ended_by"]
                    read_s = doc["read"]["seconds"]
                out.append({
                    "devices": n, "retained_messages": 5 * n, "seen": seen, "ended_by": how,
                    "wall_s_median": round(statistics.median(times), 3),
                    "read_s_last": read_s, "repeats": repeats,
                })  # fmt: skip
                print(json.dumps(out[-1]), flush=True)
            finally:
                proc.terminate()
                proc.wait(10)
    return out


def _agent_cfg(d: Path, port: int, i: int) -> Path:
    p = d / f"gw-{i:02d}.toml"
    p.write_text(
        f'device_id = "gw-{i:02d}"\nstate_dir = "{d / f"state-{i:02d}"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        "[health]\nwatchdog = false\n"
        '[[streams]]\nname = "line"\nmodel = "vibration-ae"\n'
        'source = {kind = "synthetic", rate_hz = 1.0, block = 1}\n'
    )
    return p


def _proc_stat(pid: int) -> tuple[float, int]:
    """CPU seconds (utime + stime) and RSS bytes of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def bench_idle(agents: int, minutes: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        proc, port = _broker(d)
        procs = []
        try:
            for i in range(agents):
                log = (d / f"gw-{i:02d}.log").open("wb")
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "edge_agent", "run", "--config",
                     str(_agent_cfg(d, port, i))],
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                ))  # fmt: skip
            time.sleep(60)  # start, connect, first state: not idle yet
            count = {"messages": 0, "bytes": 0}
            by_topic: dict[str, int] = {}
            lock = threading.Lock()

            def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
                if msg.retain:  # retained copies sent to us on subscribe are not traffic
                    return
                kind = "/".join(msg.topic.split("/")[2:])
                with lock:
                    count["messages"] += 1
                    count["bytes"] += len(msg.payload) + len(msg.topic)
                    by_topic[kind] = by_topic.get(kind, 0) + 1

            c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-count")
            c.on_message = on_message
            c.connect("127.0.0.1", port)
            c.subscribe("edge/#", qos=0)
            c.loop_start()
            before = {p.pid: _proc_stat(p.pid) for p in procs}
            t0 = time.monotonic()
            time.sleep(minutes * 60)
            took = time.monotonic() - t0
            after = {p.pid: _proc_stat(p.pid) for p in procs}
            c.loop_stop()
            c.disconnect()
            per_hour = 3600.0 / took / agents
            cpu = [(after[p][0] - before[p][0]) / took for p in before]
            rss = [after[p][1] for p in after]
            res = {
                "agents": agents,
                "alive": sum(p.poll() is None for p in procs),
                "seconds": round(took, 1),
                "messages_per_device_hour": round(count["messages"] * per_hour, 1),
                "payload_bytes_per_device_hour": round(count["bytes"] * per_hour),
                "messages_by_topic": by_topic,
                "rss_mb_median": round(statistics.median(rss) / 2**20, 1),
                "rss_mb_max": round(max(rss) / 2**20, 1),
                "cpu_share_median": round(statistics.median(cpu), 4),
                "cpu_share_total": round(sum(cpu), 3),
            }
            print(json.dumps(res), flush=True)
            return res
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(40)
            proc.terminate()
            proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("status")
    s.add_argument("--devices", default="50,5000")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--json", type=Path)
    i = sub.add_parser("idle")
    i.add_argument("--agents", type=int, default=10)
    i.add_argument("--minutes", type=float, default=5.0)
    i.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.what == "status":
        res: Any = bench_status([int(x) for x in args.devices.split(",")], args.repeats)
    else:
        res = bench_idle(args.agents, args.minutes)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
