"""Stopping while the state disk hangs (a frozen ext4: the writer blocks in its group
commit with the database lock held): close() returns within its bound, says which records
were only in memory, and what was stored before the freeze is still there afterwards."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge_agent.reporting.outbox import Kind, Outbox
from tests.diskfaults import ext4_fs


def test_close_returns_while_the_writer_hangs_on_the_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ext4_fs(tmp_path / "fs") as fs:
        state = fs / "state"
        state.mkdir()
        ob = Outbox(state, max_bytes=1 << 20, sync="always", now=time.time())
        closed = threading.Event()
        try:
            ob.append(Kind.EVENT, "edge/d/events", lambda s: b"{}", now=time.time())
            subprocess.run(["fsfreeze", "-f", str(fs)], check=True)
            for _ in range(3):
                ob.append(Kind.EVENT, "edge/d/events", lambda s: b"{}", now=time.time(), wait=False)
            deadline = time.monotonic() + 30.0
            while ob.health().writer_busy_s < 1.0 and time.monotonic() < deadline:
                time.sleep(0.05)  # the writer is inside its commit, blocked
            st = ob.stats()  # answers from the accounting, not the database
            assert st.depth == 1
            assert st.health is not None
            assert st.health.held == 3
            with caplog.at_level(logging.ERROR, logger="edge_agent.reporting.outbox"):

                def stop() -> None:
                    ob.close(timeout=1.0)
                    closed.set()

                threading.Thread(target=stop, daemon=True).start()
                returned = closed.wait(30.0)
        finally:
            subprocess.run(["fsfreeze", "-u", str(fs)], check=False, capture_output=True)
        assert returned, "close() did not return while the disk hung"
        assert "3 event" in caplog.text
        assert "did not finish a write" in caplog.text
        time.sleep(0.5)  # the writer's write finishes once thawed; the next start reads it
        ob2 = Outbox(state, max_bytes=1 << 20, sync="always", now=time.time())
        try:
            assert ob2.stats().depth >= 1  # the record stored before the freeze is kept
        finally:
            ob2.close()
