"""Waiting in tests for what other threads do: polled, with a generous bound that a
loaded machine does not reach (the bound is never what a test asserts)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """`pred()` once it is true (polled every 5 ms); AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.005)
