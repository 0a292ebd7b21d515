"""Helpers shared by agent-level tests: run the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`edge-agent ARGS` as a user would run it (python -m, so no install is needed)."""
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -c CODE` in a fresh interpreter from the checkout: for what one process
    imports or holds (memory, modules), which a test's own process cannot show."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def read_status(state_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state_dir / "status.json").read_text())
    return data


def first_stream_scoring(
    cfg: Path, state: Path, what: str, *, windows: int = 5, timeout: float = 90.0
) -> dict[str, Any]:
    """Run `edge-agent run --config CFG` until its first stream has scored `windows`
    windows with a score; return that stream's status section. The agent is stopped
    before returning; an agent that exits early fails with its log."""
    import os
    import time

    log = state.parent / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg),
             "--state-dir", str(state)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                st: dict[str, Any] = json.loads((state / "status.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                st = {}
            s = st["streams"][0] if st.get("streams") else None
            if s and s["windows"] >= windows and s["last_score"] is not None:
                section: dict[str, Any] = s
                return section
            time.sleep(0.05)
        raise AssertionError(f"not within {timeout} s: {what}")
    finally:
        proc.terminate()
        proc.wait(30)


class AgentProc:
    """A real `edge-agent run --config CFG --state-dir STATE` process, its output in `log`,
    outside any systemd notify socket of the test run (kill it with `kill()`, or take it
    from the `agents` fixture, which kills what is left)."""

    def __init__(
        self, cfg: Path, state: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        full.update(env or {})
        self.log = log
        self.state = state
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg),
                 "--state-dir", str(state)],
                cwd=REPO,
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def status(self) -> dict[str, Any] | None:
        try:
            return read_status(self.state)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def until(self, pred: Callable[[dict[str, Any]], Any], timeout: float, what: str) -> Any:
        """`pred(status)` once it is true, polled every 0.1 s; AssertionError (with the
        log) when the agent exits first, or after `timeout` seconds (with the status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.text()}")
            st = self.status()
            got = pred(st) if st is not None else None
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"not within {timeout} s: {what}; last status: {self.status()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
