"""Review of 03ff6da (pre-existing since StatusFile, unchanged by it): a snapshot the
encoder refuses (NaN/inf -> ValueError, a numpy int -> TypeError) raises out of the
writer thread's loop, which only catches OSError. The thread dies with `_busy` left
True, so every later write() takes the "disk hangs" path and returns False at once:
status.json stays frozen at the last good snapshot for the rest of the run, and
on_result is never called, so nothing is recorded in the status errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

from edge_agent.service.status_file import StatusFile


def test_one_unencodable_snapshot_does_not_stop_later_status_writes(tmp_path: Path) -> None:
    results: list[OSError | None] = []
    path = tmp_path / "status.json"
    f = StatusFile(path, results.append)
    assert f.write({"x": 1}, durable=False, wait_s=30.0)
    f.write({"x": math.nan}, durable=False, wait_s=30.0)  # refused: not JSON
    assert f.write({"x": 3}, durable=False, wait_s=30.0)
    assert json.loads(path.read_text()) == {"x": 3}
