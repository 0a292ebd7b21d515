"""Is the system clock synchronised? Readings stamped by an unsynchronised clock are
flagged (counted per stream as `unsynced_clock_samples`): a gateway that booted
without a network or an RTC may be days or years off until NTP/PTP sets it.

Linux: the kernel's own state, read with adjtimex(2) in read-only mode (no privilege
needed): it returns TIME_ERROR while the clock is unsynchronised, whichever daemon
(systemd-timesyncd, chrony, ntpd, ptp4l) disciplines it. Elsewhere: unknown (None).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["CLOCK", "ClockWatch", "kernel_clock_synchronized"]

_TIME_ERROR = 5  # adjtimex: clock not synchronised
_TIMEX_BYTES = 512  # larger than struct timex on every ABI; zeroed modes = read only
CHECK_EVERY_S = 10.0


def kernel_clock_synchronized() -> bool | None:
    """True/False from the kernel's clock state; None where it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # the process's own symbols, libc's among them: ctypes.util.find_library would
        # run `ldconfig -p` at each check and keep subprocess resident (issue 15)
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(_TIMEX_BYTES)  # modes = 0: only read
        rc = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    if rc < 0:
        return None
    return rc != _TIME_ERROR


class ClockWatch:
    """The clock's state, probed at most every `every_s` seconds (sources ask per read)."""

    def __init__(
        self,
        probe: Callable[[], bool | None] = kernel_clock_synchronized,
        every_s: float = CHECK_EVERY_S,
    ) -> None:
        self._probe = probe
        self._every = every_s
        self._lock = threading.Lock()
        self._state: bool | None = None
        self._at = -float("inf")

    def synchronized(self) -> bool | None:
        now = time.monotonic()
        with self._lock:
            if now - self._at >= self._every:
                self._state, self._at = self._probe(), now
            return self._state


CLOCK = ClockWatch()  # one per process: every source asks the same kernel
