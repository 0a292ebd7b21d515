"""Runs a Reporter in its own process, for tests that SIGKILL it.

    python tests/reporter_driver.py CONFIG STATE_DIR --events N [--interval S] [--linger]

Prints one JSON line per event stored ({"seq": n}) as soon as publish_event returned
(the record is durable by then), {"done": true} after the last one, then keeps running
(draining) until killed, or with --exit-when-drained exits once the outbox is empty.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.config import load_config
from edge_agent.reporting import Reporter


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("state_dir")
    ap.add_argument("--events", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.0)
    ap.add_argument("--exit-when-drained", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.config)
    r = Reporter(cfg, Path(args.state_dir), birth=lambda: {"profile": "test", "models": []})
    r.start()
    for i in range(args.events):
        seq = r.publish_event({"event": "start", "stream": "s1", "i": i})
        emit({"seq": seq})
        if args.interval:
            time.sleep(args.interval)
    emit({"done": True})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        snap = r.snapshot()
        if args.exit_when_drained and snap["mqtt"]["connected"] and snap["outbox"]["depth"] == 0:
            break
        time.sleep(0.05)
    emit({"snapshot": r.snapshot()})
    r.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
