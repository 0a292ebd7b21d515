"""Modbus and OPC UA through the whole agent: samples/s sustained, agent CPU and RSS.

For each case a real `edge-agent run` process (4-channel vibration model, MQTT off)
reads from a server running in this process (pymodbus's server, asyncua's server; the
same ones the tests use), for `--seconds` after the first scored window. Reported:
samples/s the agent took in (status `samples` over the wall time), the measured source
rate, the agent's CPU (utime+stime of its process over the same time, % of one core),
and its RSS at the end and peak (VmRSS, VmHWM). A synthetic-source run with the same
model is the baseline. Usage (from the repository root, with the `modbus` and `opcua`
extras installed):

    PYTHONPATH=. python scripts/bench_plc_sources.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
NAMES = ("vib_x", "vib_y", "vib_z", "current")
TICK = os.sysconf("SC_CLK_TCK")


def _config(source: str) -> str:
    return f"""
device_id = "gw-bench"
models_dir = "{MODELS}"

[mqtt]
enabled = false

[logging]
format = "plain"
level = "warning"

[[streams]]
name = "plc"
model = "vibration-ae"
variant = "fp32-onnx"

[streams.source]
{source}
"""


def _proc(pid: int) -> tuple[float, float, float]:
    """(cpu seconds, VmRSS MB, VmHWM MB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def _status(state: Path) -> dict[str, Any] | None:
    try:
        st: dict[str, Any] = json.loads((state / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return st["streams"][0] if st.get("streams") else None


def run_agent(name: str, source: str, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "agent.toml"
        cfg.write_text(_config(source))
        state = Path(tmp) / "state"
        log = Path(tmp) / "agent.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg),
                 "--state-dir", str(state)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                s = _status(state)
                if s and s["windows"] > 0:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"{name}: agent exited: {log.read_text()}")
                time.sleep(0.2)
            else:
                raise RuntimeError(f"{name}: no window scored: {log.read_text()[-2000:]}")
            s0 = _status(state)
            assert s0 is not None
            cpu0, _, _ = _proc(proc.pid)
            t0 = time.monotonic()
            time.sleep(seconds)
            s1 = _status(state)
            cpu1, rss, hwm = _proc(proc.pid)
            wall = time.monotonic() - t0
            assert s1 is not None
        finally:
            proc.terminate()
            proc.wait(30)
    return {
        "case": name,
        "samples_per_s": (s1["samples"] - s0["samples"]) / wall,
        "rate_measured": s1["rate_hz_measured"],
        "windows_per_s": (s1["windows"] - s0["windows"]) / wall,
        "cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "rss_mb": rss,
        "hwm_mb": hwm,
        "state": s1["source_state"],
    }


def _modbus_case(rate: float) -> tuple[str, Callable[[], None], Callable[[], None]]:
    from tests.modbus_device import ModbusDevice

    dev = ModbusDevice()

    def wave(d: ModbusDevice, t: float) -> None:
        for k in range(4):
            d.set_value("holding", k * 2, math.sin(2 * math.pi * (3 + k) * t), "float32")

    dev.waveform = wave
    chans = ", ".join(
        f'{{name = "{n}", address = {k * 2}, type = "float32"}}' for k, n in enumerate(NAMES)
    )
    src = f'kind = "modbus"\nport = {dev.port}\nrate_hz = {rate}\nchannels = [{chans}]'
    return src, dev.start, dev.stop


def _opcua_case(rate: float, mode: str) -> tuple[str, Callable[[], None], Callable[[], None]]:
    from tests.opcua_server import OpcUaServer

    plc = OpcUaServer(dict.fromkeys(NAMES, 0.0))
    stop = threading.Event()
    writer = threading.Thread(target=lambda: _write_loop(plc, stop), daemon=True)

    def start() -> None:
        plc.start()
        writer.start()

    def halt() -> None:
        stop.set()
        writer.join(5)
        plc.stop()

    chans = ", ".join(f'{{name = "{n}", node_id = "ns=2;s={n}"}}' for n in NAMES)
    src = (
        f'kind = "opcua"\nurl = "{plc.url}"\nmode = "{mode}"\nrate_hz = {rate}\n'
        f"publishing_interval_ms = 100\nchannels = [{chans}]"
    )
    return src, start, halt


def _write_loop(plc: Any, stop: threading.Event) -> None:
    while not stop.is_set():  # the PLC's values change every 10 ms
        t = time.time()
        plc.write({n: math.sin(2 * math.pi * (3 + k) * t) for k, n in enumerate(NAMES)})
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    cases: list[tuple[str, Callable[[], tuple[str, Callable[[], None], Callable[[], None]]]]] = [
        ("synthetic 100 Hz (baseline)", lambda: ('kind = "synthetic"\nrate_hz = 100.0',
                                                 lambda: None, lambda: None)),
        ("modbus tcp 100 Hz", lambda: _modbus_case(100.0)),
        ("modbus tcp max (asks 5000 Hz)", lambda: _modbus_case(5000.0)),
        ("opcua subscribe 100 Hz", lambda: _opcua_case(100.0, "subscribe")),
        ("opcua subscribe 1000 Hz", lambda: _opcua_case(1000.0, "subscribe")),
        ("opcua poll max (asks 5000 Hz)", lambda: _opcua_case(5000.0, "poll")),
    ]  # fmt: skip
    rows = []
    for name, make in cases:
        src, start, stop = make()
        start()
        try:
            rows.append(run_agent(name, src, args.seconds))
        finally:
            stop()
        r = rows[-1]
        print(
            f"{r['case']:<32} {r['samples_per_s']:>9,.0f} samples/s "
            f"(measured {r['rate_measured'] or 0:,.0f}/s) {r['windows_per_s']:>6,.0f} windows/s "
            f"cpu {r['cpu_pct']:>4.0f}%  rss {r['rss_mb']:.1f} MB (peak {r['hwm_mb']:.1f})",
            flush=True,
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
