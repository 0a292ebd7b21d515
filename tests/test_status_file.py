"""status.json is written by its own thread: a state disk that hangs (a frozen ext4)
does not stop the agent's main tick, and the newest snapshot lands once it thaws."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from edge_agent.service.status_file import StatusFile
from tests.diskfaults import ext4_fs


def test_writes_are_synchronous_while_the_disk_works(tmp_path: Path) -> None:
    results: list[OSError | None] = []
    sf = StatusFile(tmp_path / "status.json", results.append)
    assert sf.write({"n": 1}, durable=False, wait_s=30.0)
    assert json.loads((tmp_path / "status.json").read_text()) == {"n": 1}
    assert results == [None]


def test_a_failed_write_is_reported(tmp_path: Path) -> None:
    results: list[OSError | None] = []
    sf = StatusFile(tmp_path / "not-a-dir" / "status.json", results.append)
    (tmp_path / "not-a-dir").write_text("a file where the directory should be")
    assert sf.write({"n": 1}, durable=False, wait_s=30.0)
    assert len(results) == 1
    assert isinstance(results[0], OSError)


def test_the_tick_goes_on_while_the_disk_hangs(tmp_path: Path) -> None:
    with ext4_fs(tmp_path / "fs") as fs:
        results: list[OSError | None] = []
        sf = StatusFile(fs / "status.json", results.append)
        assert sf.write({"n": 0}, durable=False, wait_s=30.0)
        done = threading.Event()
        try:
            subprocess.run(["fsfreeze", "-f", str(fs)], check=True)

            def ticks() -> None:
                for n in range(1, 6):
                    sf.write({"n": n}, durable=False, wait_s=0.2)
                done.set()

            threading.Thread(target=ticks, daemon=True).start()
            returned = done.wait(30.0)
        finally:
            subprocess.run(["fsfreeze", "-u", str(fs)], check=False, capture_output=True)
        assert returned, "status writes blocked the caller while the disk hung"
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if json.loads((fs / "status.json").read_text()) == {"n": 5}:
                break
            time.sleep(0.05)
        assert json.loads((fs / "status.json").read_text()) == {"n": 5}
