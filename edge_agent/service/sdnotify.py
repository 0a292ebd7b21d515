"""systemd service notifications (sd_notify): READY, STATUS, WATCHDOG, STOPPING.

Uses systemd-python's `systemd.daemon.notify` when that extra is installed and the
socket is the one from the environment; otherwise speaks the plain protocol itself:
one datagram of `KEY=value` lines to the unix socket named by `$NOTIFY_SOCKET`
(a leading `@` means the abstract namespace). Outside systemd every call is a
cheap no-op that returns False, so the agent runs the same way on a terminal.

A failing send is logged once and never raised: the service manager being gone
must not take the pipeline down with it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from types import TracebackType

__all__ = [
    "MAX_STATUS_CHARS",
    "Notifier",
    "TimeoutExtender",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

MAX_STATUS_CHARS = 200  # systemctl shows one line; keep the datagram small


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None if no watchdog.

    $WATCHDOG_PID, when set, must name this process (systemd sets it so that
    children do not ping on the parent's behalf).
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    me = os.getpid() if pid is None else pid
    if wpid and wpid != str(me):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    if usec <= 0:
        return None
    return usec / 2e6


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > MAX_STATUS_CHARS:
        line = line[: MAX_STATUS_CHARS - 3] + "..."
    return line


def _systemd_notify() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon
    except ImportError:
        return None

    def send(state: str) -> bool:
        return bool(daemon.notify(state))

    return send


class Notifier:
    """Sends sd_notify messages. Build it with `Notifier.from_env()` in the agent."""

    def __init__(self, socket_path: str | None, *, use_systemd_python: bool = False) -> None:
        self.socket_path = socket_path or None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False
        self._lib = _systemd_notify() if (use_systemd_python and self.socket_path) else None
        self._ready_sent = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """From $NOTIFY_SOCKET. systemd-python is used only for the real environment,
        because it reads `os.environ` itself."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), use_systemd_python=environ is None)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    @property
    def via(self) -> str:
        """Which transport is used: "systemd-python", "socket" or "none"."""
        if not self.enabled:
            return "none"
        return "systemd-python" if self._lib is not None else "socket"

    # -- the messages ------------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        """READY=1 (once; later calls only update STATUS)."""
        lines = [] if self._ready_sent else ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        if not lines:
            return True
        ok = self.notify(*lines)
        self._ready_sent = self._ready_sent or ok
        return ok

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start (or stop) timeout fires."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1e6))}")

    def extending(self, seconds: float) -> TimeoutExtender:
        """`with notifier.extending(60) as ext: for m in models: ext.step(); load(m)`
        grants `seconds` per step of real progress (see TimeoutExtender)."""
        return TimeoutExtender(self, seconds)

    # -- transport ---------------------------------------------------------------
    def notify(self, *lines: str) -> bool:
        """Send raw `KEY=value` lines as one message. True if it was handed over."""
        if self.socket_path is None:
            return False
        for line in lines:
            if "\n" in line or "=" not in line:
                raise ValueError(f"not a KEY=value line: {line!r}")
        msg = "\n".join(lines)
        if self._lib is not None:
            return self._lib(msg)
        return self._send(msg.encode())

    def _address(self) -> str | bytes:
        assert self.socket_path is not None
        if self.socket_path.startswith("@"):
            return b"\0" + self.socket_path[1:].encode()
        return self.socket_path

    def _send(self, data: bytes) -> bool:
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.setblocking(False)  # never stall the pipeline on it
                self._sock.sendto(data, self._address())
            except OSError as e:
                if not self._warned:
                    log.warning("sd_notify to %s failed: %s", self.socket_path, e)
                    self._warned = True
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class TimeoutExtender:
    """Context manager that grants start-up time step by step, from the loading code itself.

    Entering sends one EXTEND_TIMEOUT_USEC grant; the loading code calls `step()` before
    each further slow piece (e.g. each model). No background thread: a load that hangs
    stops asking, so systemd's start timeout fires at most `seconds` after the last
    step instead of the unit staying "activating" for ever.
    """

    def __init__(self, notifier: Notifier, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        self._n = notifier
        self._s = seconds
        self.sent = 0

    def __enter__(self) -> TimeoutExtender:
        self.step()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def step(self) -> None:
        """Another `seconds` from now (progress was made)."""
        if self._n.extend_timeout(self._s):
            self.sent += 1
