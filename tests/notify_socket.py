"""A real unix datagram socket standing in for systemd's notify socket (test helper)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

__all__ = ["NotifySocket"]


class NotifySocket:
    """Binds a datagram socket (a path, or '@name' in the abstract namespace) and
    collects the sd_notify messages sent to it, parsed into dicts."""

    def __init__(self, address: str | Path) -> None:
        self.address = str(address)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if self.address.startswith("@"):
            self.sock.bind(b"\0" + self.address[1:].encode())
        else:
            self.sock.bind(self.address)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self, timeout: float = 0.0) -> list[dict[str, str]]:
        """Messages received so far (waiting up to `timeout` for the first new one)."""
        new: list[dict[str, str]] = []
        self.sock.settimeout(max(timeout, 0.0))  # 0.0 = non-blocking
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, TimeoutError):
                break
            msg = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), msg))
            new.append(msg)
            self.sock.settimeout(0.0)
        return new

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        for _, m in self.messages:
            if key in m:
                return m
        while time.monotonic() < deadline:
            for m in self.drain(timeout=max(0.01, deadline - time.monotonic())):
                if key in m:
                    return m
        raise AssertionError(f"no {key} message within {timeout} s: {self.messages}")

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)
