"""Two serial ports wired to each other, like a null-modem cable or an RS-485 pair of
USB adapters: two real pseudo-terminals whose master sides a thread joins.

Whatever one side writes, the other reads. `cut()` stops carrying bytes in both
directions (a cable pulled, a bus gone quiet); `join()` carries them again.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from pathlib import Path

__all__ = ["NullModem"]


class NullModem:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._fds: list[tuple[int, int]] = []
        self.paths: list[Path] = []
        for name in ("a", "b"):
            master, slave = os.openpty()
            tty.setraw(slave)
            tty.setraw(master)
            link = directory / f"tty-{name}"
            link.unlink(missing_ok=True)
            link.symlink_to(os.ttyname(slave))
            self._fds.append((master, slave))
            self.paths.append(link)
        self._carry = threading.Event()
        self._carry.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="null-modem", daemon=True)
        self._thread.start()

    @property
    def a(self) -> Path:
        return self.paths[0]

    @property
    def b(self) -> Path:
        return self.paths[1]

    def cut(self) -> None:
        self._carry.clear()

    def join(self) -> None:
        self._carry.set()

    def _relay(self) -> None:
        ma, mb = self._fds[0][0], self._fds[1][0]
        peer = {ma: mb, mb: ma}
        while not self._stop.is_set():
            ready, _, _ = select.select([ma, mb], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue  # the other end is not open yet (EIO on a pty master)
                if data and self._carry.is_set():
                    os.write(peer[fd], data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for link in self.paths:
            link.unlink(missing_ok=True)
        for master, slave in self._fds:
            os.close(master)
            os.close(slave)
