"""Review of issue 15 (stream events appended with `append(wait=False)`, ADR 0003):
"nothing on a stream's scoring thread waits for a disk"; while the disk is slow "the
record waits in the bounded spill as under a fault".

On a disk that hangs (a frozen ext4 filesystem: the writer's commit blocks, no error,
so no fault is set) the back-pressure rule (more than APPEND_BACKLOG records waiting)
turns every later append(wait=False) into a wait of APPEND_WAIT_S (2 s) on the calling
stream's thread. Through the real agent (8 live synthetic streams at speed 10 with
frequent anomalies, state dir on a loop-mounted ext4 frozen for 15 s) the live streams
dropped 50-173 blocks each while nothing was lost from the outbox.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from edge_agent.reporting.outbox import APPEND_BACKLOG, Kind, Outbox
from tests.diskfaults import ext4_fs


def test_stream_appends_do_not_wait_while_the_disk_hangs(tmp_path: Path) -> None:
    with ext4_fs(tmp_path / "fs") as fs:
        state = fs / "state"
        state.mkdir()
        ob = Outbox(state, max_bytes=1 << 20, sync="always", now=time.time())
        try:
            ob.append(Kind.EVENT, "edge/d/events", lambda s: b"{}", now=time.time())
            subprocess.run(["fsfreeze", "-f", str(fs)], check=True)  # the disk hangs
            n = APPEND_BACKLOG + 40  # a burst of alarms from the streams
            done = threading.Event()

            def stream() -> None:
                for _ in range(n):
                    ob.append(
                        Kind.EVENT, "edge/d/events", lambda s: b"{}", now=time.time(), wait=False
                    )
                done.set()

            threading.Thread(target=stream, daemon=True).start()
            # queued, not waited for: milliseconds; a 2 s wait per append past the
            # backlog would take 80 s
            returned = done.wait(30.0)
            subprocess.run(["fsfreeze", "-u", str(fs)], check=True)
            assert returned, (
                f"{n} append(wait=False) calls did not return within 30 s while the disk hung"
            )
            assert done.wait(120.0)
        finally:
            subprocess.run(["fsfreeze", "-u", str(fs)], check=False, capture_output=True)
            ob.close()
