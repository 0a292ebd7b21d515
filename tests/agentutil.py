"""Helpers shared by agent-level tests: run the real CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
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
