"""A real agent whose outbox writer blocks inside a storage call (a dying SD card, a hung
network filesystem): the outbox loop is `hung`, WATCHDOG=1 stops (systemd would restart
the service), status names the outbox; once the call returns, the watchdog resumes.

The block is real: `outbox.db-wal` is swapped for a FIFO, so the writer's per-group
WAL fsync (`sync = "always"`, the default) blocks in open(2) until the test opens the
other end. A write that *fails* is a different thing (a fault, held in memory; see
tests/test_storage_faults.py) and must never stop the watchdog."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.agentutil import AgentProc
from tests.notify_socket import NotifySocket
from tests.test_supervision_e2e import _config, _stream


def _late_watchdogs(sock: NotifySocket, after: float) -> list[float]:
    return [t for t, m in sock.messages if "WATCHDOG" in m and t > after]


def test_an_outbox_write_that_blocks_stops_the_watchdog_until_it_returns(
    tmp_path: Path,
    agents: list[AgentProc],
) -> None:
    sock = NotifySocket(tmp_path / "notify.sock")
    try:
        cfg = _config(
            tmp_path / "a.toml",
            _stream("press"),
            mqtt="enabled = false\ntelemetry_interval_s = 1",  # a record each second
            health="stall_after_s = 2",
        )
        state = tmp_path / "state"
        env = {"NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "5000000"}
        a = AgentProc(cfg, state, tmp_path / "a.log", env)
        agents.append(a)
        sock.wait_for("WATCHDOG", 60)
        wal = state / "outbox.db-wal"
        a.until(lambda s: wal.exists() and s["outbox"]["depth"] > 0, 60, "records stored")

        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        os.rename(fifo, wal)  # the next group's fsync blocks opening it
        st = a.until(lambda s: not s["health"]["live"] and s, 60, "the blocked write in status")
        assert any("outbox has not turned" in h for h in st["health"]["verdict_hints"]), st
        sock.drain()
        t_seen = time.monotonic()
        while time.monotonic() - t_seen < 6.0:  # longer than WATCHDOG_USEC
            sock.drain(0.1)
        assert not _late_watchdogs(sock, t_seen), "WATCHDOG=1 went on while the outbox hung"
        assert a.proc.poll() is None

        # The call returns (the writer's open(2) gets its peer); the path is gone again.
        fd = os.open(wal, os.O_WRONLY)
        os.unlink(wal)
        os.close(fd)
        a.until(lambda s: s["health"]["live"], 60, "live again once the write returned")
        t_back = time.monotonic()
        deadline = t_back + 30
        while not _late_watchdogs(sock, t_back) and time.monotonic() < deadline:
            sock.drain(0.5)
        assert _late_watchdogs(sock, t_back), "WATCHDOG=1 did not resume"
        assert a.stop() == 0, a.text()
        text = a.text()
        assert "withholding watchdog: hung: outbox" in text, text
        assert "every loop turns again, watchdog resumed" in text, text
    finally:
        sock.close()
