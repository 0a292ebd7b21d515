"""Review of issue 15 (event history written by its own thread): a group the writer
could only write in part (the disk filled mid-write, or a crash tore it) leaves a line
without its newline at the end of events.jsonl. The next group is appended right after
that fragment, so the first event written after the disk has room again is glued to the
fragment and read_history skips it as torn: an event lost that was written and fsynced.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.reporting.history import HISTORY_FILE, EventHistory, read_history
from tests.diskfaults import small_fs


def _rec(i: int) -> dict[str, object]:
    return {
        "kind": "anomaly",
        "event": "start",
        "stream": "s",
        "t_sample": float(i),
        "pad": "x" * 200,
    }


def test_an_event_written_after_a_torn_group_is_readable(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", "64k") as fs:
        state = fs / "state"
        state.mkdir()
        h = EventHistory(state)
        h.record(_rec(0))
        assert h.flush(timeout=60.0)
        # fill the filesystem: what is left is the rest of events.jsonl's last page
        filler = fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        for i in range(1, 40):  # a group larger than the room left: written in part
            h.record(_rec(i))
        assert h.flush(timeout=60.0)
        assert not (state / HISTORY_FILE).read_bytes().endswith(b"\n")  # torn, as a crash
        os.unlink(filler)  # the disk has room again
        h.record(_rec(100))
        assert h.flush(timeout=60.0)
        h.close()
        kept = [r["t_sample"] for r in read_history(state)]
        assert kept[0] == 0.0
        assert 100.0 in kept, f"the event written after the torn group is lost: {kept}"
