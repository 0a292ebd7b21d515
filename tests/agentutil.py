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
