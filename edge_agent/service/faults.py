"""Test hook: make a supervised component fail on purpose, in a real agent process.

`EDGE_AGENT_TEST_FAULT` holds `;`-separated items, each `component[,count]` (the
component raises `InjectedFaultError` at its next `count` heartbeats, default 1) or
`hang:component[,after]` (the component's `after`-th heartbeat, default the first,
blocks until the agent stops: a backend call that never returns). Component names are
the supervisor's (`stream-<name>`, `reporting`, `outbox`, `updater`, `metrics`, `tick`). Unset
in production: then every check is one dict lookup.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

__all__ = ["FAULT_ENV", "Faults", "InjectedFaultError"]

log = logging.getLogger(__name__)

FAULT_ENV = "EDGE_AGENT_TEST_FAULT"


class InjectedFaultError(RuntimeError):
    """Raised by the test hook; deliberately not an EdgeAgentError (it stands for a bug)."""


class Faults:
    def __init__(self, raises: Mapping[str, int], hangs: Mapping[str, int]) -> None:
        self._left = dict(raises)
        self._hang_in = dict(hangs)  # component -> heartbeats left before it hangs
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """ValueError on a malformed spec (a test typo must not pass silently)."""
        raises: dict[str, int] = {}
        hangs: dict[str, int] = {}
        for item in filter(None, (i.strip() for i in spec.split(";"))):
            hang = item.startswith("hang:")
            name, _, count = item.removeprefix("hang:").partition(",")
            n = int(count) if count else 1
            if not name or n < 1:
                raise ValueError(f"{FAULT_ENV}: bad item {item!r} ([hang:]component[,count])")
            (hangs if hang else raises)[name] = n
        return cls(raises, hangs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Faults:
        spec = (os.environ if environ is None else environ).get(FAULT_ENV, "")
        faults = cls.parse(spec)
        if spec:
            log.warning("%s=%s: faults will be injected (tests only)", FAULT_ENV, spec)
        return faults

    def check(self, component: str, stop: threading.Event) -> None:
        """Called at each heartbeat of `component`: raise or hang if asked to."""
        if not self._left and not self._hang_in:
            return
        with self._lock:
            hang_in = self._hang_in.get(component, 0) - 1
            if hang_in >= 0:
                self._hang_in[component] = hang_in
        if hang_in == 0:
            log.warning("%s: injected hang", component)
            stop.wait()
            return
        with self._lock:
            n = self._left.get(component, 0)
            if n <= 0:
                return
            self._left[component] = n - 1
        raise InjectedFaultError(f"injected fault in {component} ({n - 1} more to come)")
