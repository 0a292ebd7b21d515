"""Where the bundled models and device profiles live, however the agent was installed.

Searched in order: an environment override, the source checkout (editable install,
`git clone`), the Debian package's /usr/share/edge-agent, and <prefix>/share/edge-agent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["find_resource_dir"]

_ENV = {"models": "EDGE_AGENT_MODELS", "device_profiles": "EDGE_AGENT_PROFILES"}


def _candidates(name: str) -> list[Path]:
    out: list[Path] = []
    env = os.environ.get(_ENV.get(name, ""), "")
    if env:
        out.append(Path(env))
    out.append(Path(__file__).resolve().parent.parent / name)
    out.append(Path("/usr/share/edge-agent") / name)
    out.append(Path(sys.prefix) / "share" / "edge-agent" / name)
    return out


def find_resource_dir(name: str) -> Path | None:
    """The first existing directory for `name` ("models" or "device_profiles")."""
    for c in _candidates(name):
        if c.is_dir():
            return c
    return None
