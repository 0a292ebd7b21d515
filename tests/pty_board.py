"""A pretend USB-serial sensor board: a real pseudo-terminal pair.

The agent opens `path` (a symlink, like /dev/serial/by-id/usb-...) with pyserial,
exactly as it would a real port; the test writes bytes to the master side.
`unplug()` closes the pty and removes the link; `replug()` makes a fresh pty and
points the same link at it, the way udev does after USB re-enumeration.
"""

from __future__ import annotations

import os
import select
import tty
from pathlib import Path

__all__ = ["PtyBoard"]


class PtyBoard:
    def __init__(self, link: Path) -> None:
        self.path = link
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._master = -1
        self._slave = -1
        self.replug()

    def replug(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: bytes pass as on a UART
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self._slave))
        os.replace(tmp, self.path)

    def unplug(self) -> None:
        self.path.unlink(missing_ok=True)
        self._close()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._master, view[:4096])
            view = view[n:]

    def write_nowait(self, data: bytes, timeout: float = 0.1) -> bool:
        """Write all of `data` unless the pty stays full for `timeout` (nobody reads):
        a writer thread must not hang once the reader has gone."""
        view = memoryview(data)
        while view:
            _, ok, _ = select.select([], [self._master], [], timeout)
            if not ok:
                return False
            view = view[os.write(self._master, view[:4096]) :]
        return True

    def _close(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1

    def close(self) -> None:
        self.unplug()
