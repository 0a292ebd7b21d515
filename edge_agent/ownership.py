"""Files a command run as root leaves in the agent's state dir stay usable by the agent.

`sudo edge-agent rollback` (or any command that writes into the state dir as root)
gives every entry it created the owner of the state dir itself, so the agent, running as
its own user, can read, replace and remove them. A no-op unless the process runs as
root and the state dir belongs to someone else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["adopt_new_entries", "as_state_dir_owner"]

log = logging.getLogger(__name__)


def _foreign_owner(state_dir: Path) -> tuple[int, int] | None:
    """(uid, gid) of the state dir when we are root and it is not ours, else None."""
    if os.geteuid() != 0:
        return None
    try:
        st = Path(state_dir).stat()
    except OSError:
        return None
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def adopt_new_entries(state_dir: Path) -> list[Path]:
    """chown every entry under `state_dir` owned by root to the state dir's owner
    (root never owns anything in an agent's state dir). Returns what was changed."""
    owner = _foreign_owner(state_dir)
    if owner is None:
        return []
    changed = []
    for dirpath, dirnames, filenames in os.walk(state_dir):
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            try:
                if p.lstat().st_uid == 0:
                    os.chown(p, *owner, follow_symlinks=False)
                    changed.append(p)
            except OSError as e:
                log.warning("cannot give %s to uid %d: %s", p, owner[0], e)
    return changed


@contextmanager
def as_state_dir_owner(state_dir: Path) -> Iterator[None]:
    """Run the block, then hand whatever root created in `state_dir` to its owner (also
    when the block fails)."""
    try:
        yield
    finally:
        adopt_new_entries(Path(state_dir))
