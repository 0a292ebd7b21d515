"""The announcement trust root (`ota.root_file`), read and checked.

Its own small module (no numpy, no updater) so a trust worker
(`edge_agent.updates.trust_worker`) can check it without loading the agent's code.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from edge_agent.errors import StateError
from ota.root import Root, SignedRoot, trust_root

__all__ = ["load_root"]


def load_root(path: Path, now: datetime) -> Root:
    """The installed trust root, checked (self-signed threshold, not expired)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StateError(f"ota.root_file {path}: cannot read: {e.strerror or e}") from e
    return trust_root(SignedRoot.from_bytes(data), now)
