"""Stage timing for `bench_agent.py --latency --stages` (measurement only, never shipped).

bench_agent puts this folder first on the agent's PYTHONPATH and names a directory in
EDGE_AGENT_LATENCY_STAGES; Python imports this module at start-up (site's sitecustomize
hook). It wraps a few of the agent's own functions as they are imported and, at exit,
writes one JSON file of per-stage percentiles (ms) into that directory:

- relay: the deciding sample's time -> the event reaches EventRelay.on_event
- turnwake: the source wakes its stream -> the stream's turn starts
- score: one InferenceScheduler.score call (a turn's windows)
- step: one StreamRuntime.step
- writer_wake: an outbox append -> the writer takes its group
- store: the group's SQLite transaction; fsync: the WAL fsync
- append_to_durable: an outbox append -> its group is durable
- durable_to_publish: durable -> handed to MqttLink.publish
- tick: the agent's once-a-second tick body
- gil_probe: how late a thread sleeping 10 ms wakes (the GIL and the OS)

A function a checkout does not have (an older commit) is skipped: its stage is absent.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# the shared finder beside these hooks (scripts/import_hooks), found without an install
_HOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "import_hooks")
sys.path.insert(0, _HOOKS)
from after_import import AfterImport  # noqa: E402 - found through the path just added

_OUT = os.environ.get("EDGE_AGENT_LATENCY_STAGES")
_T: dict[str, list[float]] = {}
_appended: dict[int, float] = {}  # outbox seq -> when appended (wall s)
_durable: dict[int, float] = {}  # outbox seq -> when durable (wall s)
_woken: dict[int, float] = {}  # id(stream) -> when its source woke it (perf s)


def _add(stage: str, seconds: float) -> None:
    _T.setdefault(stage, []).append(seconds)


def _wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    orig = getattr(owner, name, None)
    if orig is not None:
        setattr(owner, name, make(orig))


def _timed(stage: str) -> Callable[[Any], Any]:
    def make(orig: Any) -> Any:
        def f(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                _add(stage, time.perf_counter() - t)

        return f

    return make


def _events(m: Any) -> None:
    def make(orig: Any) -> Any:
        def on_event(self: Any, ev: Any) -> Any:
            _add("relay", time.time() - ev.ts)
            return orig(self, ev)

        return on_event

    _wrap(m.EventRelay, "on_event", make)


def _outbox(m: Any) -> None:
    def make_append(orig: Any) -> Any:
        def append(self: Any, *a: Any, **kw: Any) -> Any:
            t = time.time()
            seq = orig(self, *a, **kw)
            if isinstance(seq, int):
                _appended[seq] = t
            return seq

        return append

    def make_step(orig: Any) -> Any:
        def step(self: Any, batch: Any, issued: Any) -> Any:
            t0 = time.time()
            for h in batch:
                if h.seq in _appended:
                    _add("writer_wake", t0 - _appended[h.seq])
            marked = False

            def mark() -> None:
                nonlocal marked
                if marked:
                    return
                marked = True
                now = time.time()
                for h in batch:
                    t = _appended.pop(h.seq, None)
                    if t is not None:
                        _add("append_to_durable", now - t)
                        _durable[h.seq] = now

            # durable when the writer calls its hook (which may publish on this thread)
            hook = getattr(self, "on_durable", None)
            if hook is not None:

                def on_durable() -> None:
                    mark()
                    hook()

                self.on_durable = on_durable
            try:
                return orig(self, batch, issued)
            finally:
                if hook is not None:
                    self.on_durable = hook
                mark()

        return step

    _wrap(m.Outbox, "append", make_append)
    _wrap(m.Outbox, "_step", make_step)
    _wrap(m.Outbox, "_store", _timed("store"))
    if hasattr(m, "outbox_db"):
        _wrap(m.outbox_db, "fsync_wal", _timed("fsync"))


def _link(m: Any) -> None:
    def make(orig: Any) -> Any:
        def publish(self: Any, topic: str, payload: bytes, **kw: Any) -> Any:
            if topic.endswith("/events"):
                try:
                    t = _durable.pop(int(json.loads(payload)["seq"]), None)
                except (ValueError, KeyError, TypeError):
                    t = None
                if t is not None:
                    _add("durable_to_publish", time.time() - t)
            return orig(self, topic, payload, **kw)

        return publish

    _wrap(m.MqttLink, "publish", make)


def _streams(m: Any) -> None:
    def make_set_waker(orig: Any) -> Any:
        def set_waker(self: Any, wake: Callable[[], None]) -> Any:
            key = id(self)

            def woken() -> None:
                _woken.setdefault(key, time.perf_counter())
                wake()

            return orig(self, woken)

        return set_waker

    def make_step(orig: Any) -> Any:
        def step(self: Any, loop: Any) -> Any:
            t = time.perf_counter()
            w = _woken.pop(id(self), None)
            if w is not None:
                _add("turnwake", t - w)
            try:
                return orig(self, loop)
            finally:
                _add("step", time.perf_counter() - t)

        return step

    _wrap(m.StreamRuntime, "set_waker", make_set_waker)
    _wrap(m.StreamRuntime, "step", make_step)


def _scheduler(m: Any) -> None:
    _wrap(m.InferenceScheduler, "score", _timed("score"))


def _agent(m: Any) -> None:
    _wrap(m.Agent, "_tick_body", _timed("tick"))


_PATCHES: dict[str, Callable[[Any], None]] = {
    "edge_agent.service.events": _events,
    "edge_agent.reporting.outbox": _outbox,
    "edge_agent.reporting.link": _link,
    "edge_agent.streams": _streams,
    "edge_agent.runtime.scheduler": _scheduler,
    "edge_agent.agent": _agent,
}


def _probe() -> None:
    while True:
        t = time.perf_counter()
        time.sleep(0.01)
        _add("gil_probe", time.perf_counter() - t - 0.01)


def _dump() -> None:
    out: dict[str, dict[str, float]] = {}
    for stage, xs in list(_T.items()):
        ms = sorted(x * 1e3 for x in xs)
        if ms:
            n = len(ms)
            out[stage] = {
                "n": n,
                "p50": ms[n // 2],
                "p90": ms[min(n - 1, int(n * 0.9))],
                "p99": ms[min(n - 1, int(n * 0.99))],
                "max": ms[-1],
            }
    assert _OUT is not None
    with open(os.path.join(_OUT, f"stages-{os.getpid()}.json"), "w") as f:
        json.dump(out, f)


if _OUT:
    sys.meta_path.insert(0, AfterImport(_PATCHES))
    threading.Thread(target=_probe, name="stage-probe", daemon=True).start()
    atexit.register(_dump)
