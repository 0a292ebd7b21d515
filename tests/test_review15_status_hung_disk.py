"""Review of issue 15 ("the main loop (watchdog, status) is never starved"): while the
state disk hangs (a frozen ext4: the outbox writer's group commit blocks inside
store_group with the outbox's _db_lock held), Outbox.stats(), which the agent's main
tick calls for every status snapshot, waits for that lock. Through the real agent
(8 live streams, disk frozen, then SIGTERM) the process was still running 40 s after
SIGTERM (SHUTDOWN_S is 20 s); faulthandler showed the main thread in Outbox.stats.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from edge_agent.reporting.outbox import Kind, Outbox
from tests.diskfaults import ext4_fs


def test_stats_answers_while_the_writer_hangs_on_the_disk(tmp_path: Path) -> None:
    with ext4_fs(tmp_path / "fs") as fs:
        state = fs / "state"
        state.mkdir()
        ob = Outbox(state, max_bytes=1 << 20, sync="always", now=time.time())
        try:
            ob.append(Kind.EVENT, "edge/d/events", lambda s: b"{}", now=time.time())
            subprocess.run(["fsfreeze", "-f", str(fs)], check=True)  # the disk hangs
            ob.append(Kind.EVENT, "edge/d/events", lambda s: b"{}", now=time.time(), wait=False)
            time.sleep(1.0)  # the writer is inside its group commit, blocked
            answered = threading.Event()

            def tick() -> None:  # what the agent's main tick does for status.json
                ob.stats()
                answered.set()

            threading.Thread(target=tick, daemon=True).start()
            ok = answered.wait(30.0)
            subprocess.run(["fsfreeze", "-u", str(fs)], check=True)
            assert ok, "Outbox.stats() did not answer within 30 s while the disk hung"
        finally:
            subprocess.run(["fsfreeze", "-u", str(fs)], check=False, capture_output=True)
            ob.close()
