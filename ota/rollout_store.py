"""Where a rollout's state lives, and who may drive it.

Outside the director tree (that directory is served as static files): by default a
sibling `<director>.rollouts/`. Per group:
- `<group>.json`: the rollout (`ota.rollout.Rollout.to_json`), replaced atomically (temp
  file, fsync, rename, fsync the directory) after every transition; a finished rollout's
  file is kept as `<group>.<id>.json` when the next one starts;
- `<group>.lock`: an exclusive `fcntl.flock` held by the one process driving or changing
  the rollout; its content names the holder (pid, host, since, command) for the refusal a
  second one gets. The lock dies with its process (a SIGKILLed driver leaves no lock);
- `<group>.control.json`: a request (`pause` or `abort`) from another terminal, which a
  running driver takes at its next poll.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write_json
from ota.rollout import Rollout, RolloutError, RolloutUsageError

__all__ = ["LOCK_RETRY_S", "RolloutBusyError", "RolloutStore", "default_state_dir"]

LOCK_RETRY_S = 2.0  # a `status` peeking at the lock holds it for an instant: try again
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RolloutBusyError(RolloutError):
    """Another process drives or changes this group's rollout now."""


def default_state_dir(director: Path) -> Path:
    d = Path(director).resolve()
    return d.parent / f"{d.name}.rollouts"


class RolloutStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _name(self, group: str) -> str:
        if not _GROUP.fullmatch(group):
            raise RolloutUsageError(
                f"group {group!r}: a rollout's group must be letters, digits, '.', '_' and "
                "'-' (it names the rollout's state file)"
            )
        return group

    def path(self, group: str) -> Path:
        return self.root / f"{self._name(group)}.json"

    def control_path(self, group: str) -> Path:
        return self.root / f"{self._name(group)}.control.json"

    def lock_path(self, group: str) -> Path:
        return self.root / f"{self._name(group)}.lock"

    # --- the state ----------------------------------------------------------------------
    def load(self, group: str) -> Rollout | None:
        p = self.path(group)
        try:
            doc = json.loads(p.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise RolloutError(f"{p}: cannot read the rollout state: {e}") from e
        try:
            if not isinstance(doc, dict):
                raise RolloutError("not a rollout state document")
            return Rollout.from_json(doc)
        except RolloutError as e:
            raise RolloutError(
                f"{p}: {e}. Restore the file from a backup if you have one; otherwise move "
                "it aside: the group then has no rollout, and its devices keep what the "
                "director names now (`edge-ota director set` changes that)"
            ) from e

    def save(self, r: Rollout) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path(r.group), r.to_json(), mode=0o600)

    def archive(self, r: Rollout) -> Path:
        """Keep a finished rollout's file beside the next one's."""
        dest = self.root / f"{self._name(r.group)}.{r.id}.json"
        os.replace(self.path(r.group), dest)
        return dest

    # --- the driver's lock --------------------------------------------------------------
    @contextmanager
    def lock(self, group: str, command: str) -> Iterator[None]:
        """Hold the group's lock; RolloutBusyError naming the holder if another has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.lock_path(group)
        deadline = time.monotonic() + LOCK_RETRY_S
        fd = self._acquire(group, path, deadline)
        try:
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.time(),
                "command": command,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # no stale name once released
                if not self.path(group).exists():
                    # a refused command (or a group with no rollout) leaves no lock file;
                    # removed while held: a waiter then sees it is gone (`_acquire`)
                    path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # releases the flock

    def _acquire(self, group: str, path: Path, deadline: float) -> int:
        """An fd of the lock file holding its flock. The file may be removed by the
        holder (above): a lock taken on a removed file is no lock, so try again on the
        file the path names now."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise RolloutBusyError(
                        f"group {group!r}: the rollout is being driven by "
                        f"{self.describe_holder(self.holder_info(group))}; wait for it, or use "
                        "`edge-ota rollout pause|abort` to ask it to stop"
                    ) from None
                time.sleep(0.1)
                continue
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def holder(self, group: str) -> dict[str, Any] | None:
        """Who holds the lock now (None when nobody does)."""
        path = self.lock_path(group)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self.holder_info(group) or {"pid": None}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def holder_info(self, group: str) -> dict[str, Any]:
        try:
            info = json.loads(self.lock_path(group).read_bytes() or b"{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    @staticmethod
    def describe_holder(info: dict[str, Any]) -> str:
        if not info.get("pid"):
            return "another process"
        since = info.get("since")
        when = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
            if isinstance(since, (int, float))
            else "?"
        )
        return (
            f"pid {info.get('pid')} on {info.get('host', '?')} "
            f"(`rollout {info.get('command', '?')}`, since {when})"
        )

    # --- control requests ---------------------------------------------------------------
    def request(self, group: str, what: str, now: float) -> dict[str, Any]:
        body = {"request": what, "at": now, "pid": os.getpid(), "host": socket.gethostname()}
        atomic_write_json(self.control_path(group), body, mode=0o600)
        return body

    def take_request(self, group: str) -> dict[str, Any] | None:
        p = self.control_path(group)
        try:
            body = json.loads(p.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            body = None  # torn or junk: dropped (writers replace it atomically)
        p.unlink(missing_ok=True)
        return (
            body if isinstance(body, dict) and body.get("request") in ("pause", "abort") else None
        )

    def clear_request(self, group: str) -> None:
        self.control_path(group).unlink(missing_ok=True)
