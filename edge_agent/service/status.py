"""The technician's verdict on `<state_dir>/status.json`, pure (time passed in).

The agent writes status.json about once per second and at exit (contract in
docs/status.md). `assess()` turns what was read from disk into a `Verdict`
(OK / DEGRADED / DOWN) with human reasons; `edge_agent.service.status_render` draws
it for an 80-column terminal; `edge-agent status` does the I/O.

Field access is defensive on purpose: a technician's tool must say something
useful about a half-written, older or newer file, never print a traceback.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "EXIT_CODES",
    "OUTBOX_BACKLOG_S",
    "RATE_LOW_FRACTION",
    "STALE_AFTER_S",
    "STATUS_FILE",
    "STATUS_FORMAT",
    "Assessment",
    "Snapshot",
    "Verdict",
    "assess",
    "fmt_duration",
    "summary_line",
]

STATUS_FILE = "status.json"
STATUS_FORMAT = 1
STALE_AFTER_S = 10.0  # the agent writes every ~1 s; 10 missed writes = not responding
# A stale file with less than this free beside it: the disk is why it is stale.
FULL_BELOW_BYTES = 1 << 20
OUTBOX_BACKLOG_S = 600.0  # oldest unsent record older than this: reporting is behind
RATE_LOW_FRACTION = 0.5  # measured below half the configured rate: the sensor lags
RATE_GRACE_S = 15.0  # rates need a few seconds after start to mean anything
RECENT_ERRORS_S = 60.0
TAKEOVER_RECENT_S = 600.0  # a session takeover keeps the verdict DEGRADED this long

T = TypeVar("T")


class Verdict(str, enum.Enum):
    OK = "OK"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"


# 2 stays "bad usage" like every other command; 1 doubles as generic failure.
EXIT_CODES: Mapping[Verdict, int] = {Verdict.OK: 0, Verdict.DEGRADED: 1, Verdict.DOWN: 3}


@dataclass(frozen=True)
class Snapshot:
    """What was found on disk. `state` is None when missing or unreadable."""

    state_dir: str
    exists: bool
    state: Mapping[str, Any] | None = None
    error: str = ""
    pid_alive: bool | None = None  # None: not checked / no pid in the file
    free_bytes: int | None = None  # free space where status.json lives; None: not measured


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    reasons: tuple[str, ...]  # why it is not OK (empty when OK)
    notes: tuple[str, ...] = ()  # worth knowing, does not change the verdict
    stale: bool = False  # the state shown is the last known one, not live
    age_s: float | None = None  # now - written_at

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def get(d: Any, key: str, typ: type[T], default: T) -> T:
    """`d[key]` if `d` is a mapping and the value has type `typ`, else `default`."""
    if not isinstance(d, Mapping):
        return default
    v = d.get(key, default)
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)  # type: ignore[return-value]
    if isinstance(v, typ) and not (typ is not bool and isinstance(v, bool)):
        return v
    return default


def num(d: Any, key: str) -> float | None:
    v = d.get(key) if isinstance(d, Mapping) else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def fmt_duration(s: float) -> str:
    """Short human duration: 0.4 s, 42 s, 5m12s, 3h05m, 12d03h."""
    s = max(0.0, s)
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _file_problem(snap: Snapshot) -> str:
    """Why the file tells nothing about a running agent, or "" if it may."""
    if not snap.exists:
        return f"never ran here: no {STATUS_FILE} in {snap.state_dir}"
    if snap.state is None:
        return f"{STATUS_FILE} unreadable: {snap.error}"
    fmt = snap.state.get("v")
    if fmt != STATUS_FORMAT:
        return f"{STATUS_FILE} has format v={fmt!r}; this edge-agent reads v={STATUS_FORMAT}"
    return ""


def _process_problem(st: Mapping[str, Any], pid_alive: bool | None, age: float | None) -> str:
    """Why the agent that wrote `st` is not running now, or "" if it is."""
    ago = "" if age is None else f"{fmt_duration(age)} ago"
    if not get(st, "running", bool, False):
        why = get(st, "stop_reason", str, "")
        if why.startswith("error:"):
            return f"agent stopped on an error: {why[6:].strip()}" + (f" ({ago})" if ago else "")
        return "agent stopped (clean exit)" + (f" {ago}" if ago else "")
    if pid_alive is False:
        pid = get(st, "pid", int, 0)
        return f"agent not running: pid {pid} is gone (crashed or killed)" + (
            f"; last status {ago}" if ago else ""
        )
    if age is None or age > STALE_AFTER_S:
        return f"agent not responding: status last written {ago or 'never'}"
    return ""


def _disk_full(snap: Snapshot) -> str:
    """Why a running agent's status is stale when its filesystem is full, else ""."""
    st = snap.state
    free = snap.free_bytes
    if (
        st is None
        or free is None
        or free >= FULL_BELOW_BYTES
        or not get(st, "running", bool, False)
    ):
        return ""
    pid = get(st, "pid", int, 0)
    return (
        f"disk full: the agent (pid {pid}) runs but cannot write {STATUS_FILE} "
        f"({free // 1024} KiB free on the filesystem of {snap.state_dir}); free space there "
        "(records wait in memory meanwhile); what follows is the last status written"
    )


def assess(snap: Snapshot, now: float) -> Assessment:
    """The verdict. DOWN: the agent does not run (or does no work at all);
    DEGRADED: it runs but something needs attention; OK: nothing to report."""
    problem = _file_problem(snap)
    if problem:
        return Assessment(Verdict.DOWN, (problem,), stale=snap.exists)
    st = snap.state
    assert st is not None  # _file_problem checked it
    written = num(st, "written_at")
    age = None if written is None else max(0.0, now - written)
    problem = _process_problem(st, snap.pid_alive, age)
    full = _disk_full(snap) if problem and snap.pid_alive else ""
    if full:
        # It runs and scores (records wait in memory); a restart would not help.
        return Assessment(Verdict.DEGRADED, (full,), stale=True, age_s=age)
    if problem:
        return Assessment(Verdict.DOWN, (problem,), stale=True, age_s=age)
    reasons, notes = _running_findings(st, now)
    if not get(st.get("health"), "live", bool, True):
        # a supervised loop stopped turning: WATCHDOG=1 is withheld (docs/status.md)
        reasons.insert(0, "pipeline stalled: agent runs but a loop of it hangs")
        return Assessment(Verdict.DOWN, tuple(reasons), tuple(notes), age_s=age)
    verdict = Verdict.DEGRADED if reasons else Verdict.OK
    return Assessment(verdict, tuple(reasons), tuple(notes), age_s=age)


def _running_findings(st: Mapping[str, Any], now: float) -> tuple[list[str], list[str]]:
    reasons: list[str] = []
    notes: list[str] = []
    started = num(st, "started_at")
    up = None if started is None else now - started
    health = st.get("health")
    if not get(health, "ready", bool, get(st, "ready", bool, True)):
        reasons.append("not ready yet (starting up)" if up is not None and up < 60 else "not ready")
    hints = get(health, "verdict_hints", list, [])
    reasons.extend(str(h) for h in hints if h)
    streams = get(st, "streams", list, [])
    if not streams:
        reasons.append("no streams configured: add [[streams]] to the config file and restart")
    for s in streams:
        _stream_findings(s, up, reasons, notes)
    _mqtt_findings(st.get("mqtt"), now, reasons, notes)
    _component_findings(st.get("supervisor"), now, reasons, notes)
    out = st.get("outbox")
    # The reporter words the outbox's storage faults itself (reporting/outbox_health.py).
    reasons.extend(str(p) for p in get(out, "problems", list, []) if p)
    oldest = num(out, "oldest_age_s")
    mqtt_on = get(st.get("mqtt"), "enabled", bool, False)
    if mqtt_on and oldest is not None and oldest > OUTBOX_BACKLOG_S:
        reasons.append(f"outbox backlog: oldest unsent record {fmt_duration(oldest)} old")
    drops = get(out, "drops", dict, {})
    lost = {k: v for k, v in drops.items() if isinstance(v, int) and v > 0}
    if lost:
        notes.append("outbox dropped " + ", ".join(f"{v} {k}" for k, v in sorted(lost.items())))
    errors = get(st, "errors", list, [])
    recent = [e for e in errors if (ts := num(e, "ts")) is not None and now - ts <= RECENT_ERRORS_S]
    if recent:
        notes.append(f"{len(recent)} error(s) in the last minute")
    return reasons, notes


def _stream_findings(s: Any, up: float | None, reasons: list[str], notes: list[str]) -> None:
    name = get(s, "name", str, "?")
    state = get(s, "source_state", str, "?")
    err = get(s, "source_error", str, "")
    why = f": {err}" if err else ""
    if state in ("failed", "reconnecting", "stopped"):
        reasons.append(f"stream {name}: source {state}{why}")
    elif state == "finished":
        notes.append(f"stream {name}: source finished (end of data)")
    failed = get(s, "error", str, "")
    if failed:
        reasons.append(f"stream {name}: scoring stopped: {failed}")
    conf = num(s, "rate_hz_configured")
    meas = num(s, "rate_hz_measured")
    warm = up is None or up > RATE_GRACE_S
    if (
        state == "running"
        and warm
        and conf
        and meas is not None
        and meas < conf * RATE_LOW_FRACTION
    ):
        reasons.append(f"stream {name}: {meas:.3g} Hz, configured {conf:.3g} Hz")
    fallback = get(s.get("model") if isinstance(s, Mapping) else None, "fallback", str, "")
    if fallback:
        reasons.append(f"stream {name}: model fallback: {fallback}")
    for issue in get(
        s.get("sensor_health") if isinstance(s, Mapping) else None, "active", list, []
    ):
        reasons.append(f"stream {name}: sensor: {issue}")
    dropped = get(s, "dropped_blocks", int, 0)
    if dropped:
        notes.append(f"stream {name}: {dropped} blocks dropped (pipeline behind)")


def _component_findings(sup: Any, now: float, reasons: list[str], notes: list[str]) -> None:
    """The supervisor's view: failed (budget spent) and restarting components are
    DEGRADED; past restarts of a component that runs again are a note."""
    for c in get(sup, "components", list, []):
        name = get(c, "name", str, "?")
        state = get(c, "state", str, "")
        n = get(c, "restarts", int, 0)
        err = get(c, "last_error", str, "")
        why = f": {err}" if err else ""
        retry_at = num(c, "retry_at")
        if state == "failed" and retry_at is not None:
            wait = fmt_duration(retry_at - now)
            reasons.append(
                f"{name} failed past its restart budget ({n} restarts), next try in {wait}{why}"
            )
        elif state == "failed":
            reasons.append(f"{name} failed, not restarted again ({n} restarts){why}")
        elif state == "restarting":
            reasons.append(f"{name} restarting (restart {n + 1}){why}")
        elif n:
            notes.append(f"{name} restarted {n} time(s){why}")


def _mqtt_findings(m: Any, now: float, reasons: list[str], notes: list[str]) -> None:
    if not get(m, "enabled", bool, False):
        return
    broker = get(m, "broker", str, "broker")
    if not get(m, "connected", bool, False):
        since = num(m, "since")
        dur = f" for {fmt_duration(now - since)}" if since is not None else ""
        err = get(m, "last_error", str, "")
        reasons.append(f"MQTT not connected to {broker}{dur}" + (f": {err}" if err else ""))
    unacked = num(m, "unacked_since")
    if unacked is not None:  # a broker that takes messages but acknowledges none
        n = get(m, "ack_timeouts", int, 0)
        clock = time.strftime("%H:%M:%S", time.localtime(unacked))
        dur = fmt_duration(now - unacked)
        reasons.append(
            f"MQTT: {broker} has acknowledged nothing since {clock} ({dur}, {n} ack "
            "timeout(s)); records wait in the outbox: check the broker (its log, disk)"
        )
    denied = get(m, "acl_denied", int, 0)
    if denied:
        reasons.append(f"MQTT: {denied} publish(es) denied by the broker's ACL")
    last_takeover = num(m, "last_takeover")
    if last_takeover is not None and now - last_takeover <= TAKEOVER_RECENT_S:
        n = get(m, "takeovers", int, 1)
        reasons.append(
            f"MQTT: another client uses this client id (is device_id unique?): session "
            f"taken over {n} time(s), last {fmt_duration(now - last_takeover)} ago"
        )
    oversized = get(m, "oversized", int, 0)
    if oversized:
        limit = get(m, "max_packet_size", int, 0)
        at = f" (maximum packet size {limit} bytes)" if limit else ""
        reasons.append(
            f"MQTT: {oversized} message(s) larger than the broker accepts{at}, set aside"
        )


def assess_own(state: Mapping[str, Any], now: float) -> Assessment:
    """The verdict on the agent's own state dict (it runs: no file or pid to check)."""
    return assess(Snapshot("", True, state, pid_alive=True), now)


def summary_line(state: Mapping[str, Any], now: float, a: Assessment | None = None) -> str:
    """One line for systemd's STATUS= from the agent's own state dict, e.g.
    'OK: 2 streams, 4000 windows, 3 alarms, mqtt up, outbox 0'. `a`: its assessment,
    when the caller made it already."""
    if a is None:
        a = assess_own(state, now)
    streams = get(state, "streams", list, [])
    windows = sum(get(s, "windows", int, 0) for s in streams)
    alarms = sum(get(s, "alarms", int, 0) for s in streams)
    m = state.get("mqtt")
    link = (
        "off"
        if not get(m, "enabled", bool, False)
        else ("up" if get(m, "connected", bool, False) else "down")
    )
    depth = get(state.get("outbox"), "depth", int, 0)
    base = (
        f"{len(streams)} stream(s), {windows} windows, {alarms} alarms, mqtt {link}, outbox {depth}"
    )
    if a.verdict is Verdict.OK:
        return f"OK: {base}"
    return f"{a.verdict.value}: {a.reasons[0]}; {base}"
