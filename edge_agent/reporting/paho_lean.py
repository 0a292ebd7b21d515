"""paho-mqtt's client without ssl and urllib.request until something uses them (issue 15).

paho imports `ssl` and `urllib.request` (which brings `http.client` and `email`) at its
top: ~2.7 MB resident in an agent whose broker connection is plain TCP. paho uses them:
- `ssl`: in `tls_set` (the link imports ssl itself to configure TLS, so it is loaded
  before paho touches it) and in `except ssl.SSLWantReadError` / `SSLWantWriteError`
  clauses around every socket read and write, evaluated when the read or write raises;
- `urllib.request`: to read proxy settings, only when PySocks is installed.

While paho's client module executes, both names are bound to stand-ins. A stand-in
imports the real module at its first attribute read and forwards every read to it, with
one exception: the two SSLWant* classes while `ssl` is not loaded. No SSL socket can
exist before `ssl` is imported, so nothing can raise them; the clauses then get a class
nothing raises, and paho's plain-TCP reads and writes (EAGAIN included) never load ssl.
Once anything imports ssl, the stand-in forwards those names too. The stand-ins leave
`sys.modules` when paho's import returns: every other module imports the real ones.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["DeferredModule", "paho"]

# Exception classes of `ssl` that only an SSL socket raises (see the docstring).
_SSL_SOCKET_ONLY = frozenset({"SSLWantReadError", "SSLWantWriteError"})


class _NeverRaisedError(Exception):
    """Matches nothing: stands for an SSL socket's exception while no SSL socket exists."""


class DeferredModule(types.ModuleType):
    """A module imported at the first attribute read (thread-safe), then forwarded to."""

    def __init__(self, name: str) -> None:
        super().__init__(name, f"stand-in for {name}, imported at first use")
        self._lock = threading.Lock()

    def _real(self) -> types.ModuleType:
        name = self.__name__
        with self._lock:
            mod = sys.modules.get(name)
            if mod is None or mod is self:
                if mod is self:
                    del sys.modules[name]
                mod = importlib.import_module(name)
            return mod

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and inspect probe dunders: no import
            raise AttributeError(attr)
        if self.__name__ == "ssl" and attr in _SSL_SOCKET_ONLY:
            loaded = sys.modules.get("ssl")
            if loaded is None or loaded is self:
                return _NeverRaisedError
        return getattr(self._real(), attr)


@contextmanager
def deferred(*names: str) -> Iterator[None]:
    """Within: `import name` (for each name not loaded yet) binds a DeferredModule."""
    placed: dict[str, DeferredModule] = {}
    for name in names:
        if name not in sys.modules:
            placed[name] = sys.modules[name] = DeferredModule(name)
    try:
        yield
    finally:
        for name, stand_in in placed.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
            parent, _, child = name.rpartition(".")
            # `import urllib.request` finds the stand-in in sys.modules and does not
            # bind it on the package; paho reads it as `urllib.request.<name>`. A real
            # import later rebinds the attribute to the real module.
            if parent and parent in sys.modules and not hasattr(sys.modules[parent], child):
                setattr(sys.modules[parent], child, stand_in)


with deferred("ssl", "urllib.request"):
    import paho.mqtt.client as paho
