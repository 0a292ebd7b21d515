"""Group commit: outbox appends per second from 1 and from N threads, one fsync per group.

    python scripts/bench_outbox_groups.py [--dir DIR] [--records 400] [--threads 8]

Appends `--records` events (sync = "always") from one thread, then the same number split
over `--threads` threads, each in a fresh outbox under DIR (default: the system temp
dir, so the disk that matters is the one under it). Prints records/s and how many group
commits (transactions, each with one WAL fsync) stored them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.reporting.outbox import Kind, Outbox


def run(base: Path, records: int, threads: int) -> tuple[float, int]:
    ob = Outbox(Path(tempfile.mkdtemp(dir=base)), max_bytes=64 << 20, now=time.time())
    each = records // threads

    def work() -> None:
        for _ in range(each):
            ob.append(Kind.EVENT, "edge/d/events", lambda s: b"x" * 250, now=time.time())

    ts = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rate = each * threads / (time.perf_counter() - t0)
    groups = ob.stats().groups
    ob.close()
    return rate, groups


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--records", type=int, default=400)
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args()
    for n in (1, a.threads):
        rate, groups = run(a.dir, a.records, n)
        print(f"{n} thread(s): {rate:7.0f} records/s, {a.records} records in {groups} groups")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
