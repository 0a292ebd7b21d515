"""Disk full under the outbox: records held in memory, RSS, time to DEGRADED, recovery.

    sudo python scripts/measure_outbox_faults.py [--seconds 60] [--rate 10]

Needs root (mounts a 4 MiB tmpfs as the state dir). Starts its own mosquitto and a
subscriber. A Reporter (the agent's reporting side, in this process) publishes anomaly
events at --rate per second plus one telemetry record per second; after 2 s the tmpfs is
filled to the last block, kept full for --seconds, then freed. Prints, every 5 s, the
records held in memory, their bytes and this process's RSS; the time from the fill to the
outbox's DEGRADED reason; and the time from freeing to every held record delivered.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.config import parse_config  # noqa: E402
from edge_agent.reporting import Reporter  # noqa: E402
from tests.mosquitto import Broker  # noqa: E402
from tests.subscriber import Subscriber  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fill(path: Path) -> None:
    with path.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def main() -> int:  # noqa: PLR0915 - one linear measurement
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the disk stays full")
    ap.add_argument("--rate", type=float, default=10.0, help="anomaly events per second")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (mounts a tmpfs)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="outbox-faults-"))
    state = work / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], check=True)
    broker = Broker(work / "broker")
    broker.start()
    sub = Subscriber(broker.host, broker.port, "edge/gw-m/events", client_id="m-sub")
    cfg = parse_config({"device_id": "gw-m", "mqtt": {"host": broker.host, "port": broker.port}})
    r = Reporter(cfg, state, birth=dict)
    r.start()
    sent: list[int] = []
    try:
        time.sleep(1.0)
        print(f"before: RSS {rss_mb():.1f} MB")
        rss0 = rss_mb()
        period = 1.0 / args.rate
        t0 = time.monotonic()
        t_fill = t_degraded = t_free = None
        next_tel = next_print = t0
        i = 0
        while True:
            now = time.monotonic()
            if t_fill is None and now - t0 >= 2.0:
                fill(state / "filler")
                t_fill = time.monotonic()
            if t_fill is not None and t_free is None and now - t_fill >= args.seconds:
                (state / "filler").unlink()
                t_free = time.monotonic()
                break
            sent.append(r.publish_event({"event": "start", "stream": "s1", "i": i, "x": "v" * 80}))
            i += 1
            if now >= next_tel:
                r.publish_telemetry({"stream": "s1", "windows": i})
                next_tel += 1.0
            ob = r.snapshot()["outbox"]
            if t_fill is not None and t_degraded is None and ob["problems"]:
                t_degraded = time.monotonic()
                print(f"DEGRADED {t_degraded - t_fill:.2f} s after the fill: {ob['problems'][0]}")
            if now >= next_print:
                print(
                    f"t={now - t0:5.1f} s held {ob['held_in_memory']:5d} records "
                    f"{ob['held_bytes'] / 1024:7.1f} KiB, RSS {rss_mb():.1f} MB "
                    f"(+{rss_mb() - rss0:.1f})"
                )
                next_print += 5.0
            time.sleep(max(0.0, period - (time.monotonic() - now)))
        ob = r.snapshot()["outbox"]
        print(
            f"at the end of {args.seconds:.0f} s full: held {ob['held_in_memory']} records, "
            f"{ob['held_bytes'] / 1024:.1f} KiB, RSS {rss_mb():.1f} MB (+{rss_mb() - rss0:.1f}), "
            f"dropped {ob['dropped_by_kind']}"
        )
        want = set(sent)

        def delivered() -> bool:
            return want <= {int(m.json()["seq"]) for m in sub.messages}

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not delivered():
            time.sleep(0.05)
        assert t_free is not None
        print(
            f"freed: every one of {len(want)} events delivered {time.monotonic() - t_free:.2f} s "
            f"later: {delivered()}; fault now {r.snapshot()['outbox']['fault']}"
        )
    finally:
        r.stop()
        sub.close()
        broker.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
