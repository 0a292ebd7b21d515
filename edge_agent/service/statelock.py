"""One state dir, one agent: an advisory lock on `<state_dir>/agent.lock`.

Two agents on one state dir would issue the same outbox `seq` with different payloads
and overwrite each other's slot state. The lock is `flock`ed for the life of the
process (the kernel drops it when the process ends, however it ends), and the file
holds the owner's pid so the second agent can say who holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from edge_agent.errors import StateError

__all__ = ["LOCK_FILE", "StateDirLock"]

LOCK_FILE = "agent.lock"


class StateDirLock:
    """`StateDirLock.acquire(dir)` holds the lock until `release()` or process exit."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateDirLock:
        """StateError naming the holder's pid when another agent uses `state_dir`."""
        path = Path(state_dir) / LOCK_FILE
        writable = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:
            # left by another user (e.g. root): a read-only descriptor locks just as well
            writable = False
            fd = cls._open_read_only(path, state_dir)
        except OSError as e:
            raise StateError(
                f"{path}: cannot open the state dir lock: {e.strerror} (is {state_dir} "
                "writable by the agent's user? use --state-dir)"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise StateError(
                f"state dir {state_dir} is in use by another edge-agent ({who}): one state "
                "dir serves one agent; stop that one or give this one its own --state-dir"
            ) from e
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @staticmethod
    def _open_read_only(path: Path, state_dir: Path) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise StateError(
                f"{path}: cannot open the state dir lock: {e.strerror}; give the state dir "
                f"back to the agent's user (chown -R <agent user> {state_dir})"
            ) from e

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0).decode().strip()
        return int(raw) if raw else None
    except (OSError, ValueError):
        return None
