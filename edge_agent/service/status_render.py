"""Draw an `Assessment` and its status.json for a terminal of `width` columns (pure).

Every line is cut to `width` (ending in "..."), so a long stream name or error
message never wraps into the next field on an 80-column console. ASCII only:
gateway consoles are not always UTF-8.
"""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Mapping
from typing import Any

from edge_agent.service.status import Assessment, Snapshot, fmt_duration, get, num

__all__ = ["DEFAULT_WIDTH", "MAX_ERRORS_SHOWN", "render_text"]

DEFAULT_WIDTH = 80
MAX_ERRORS_SHOWN = 3
LABEL = 9  # "outbox   " column for section labels

# Stream table: (header, width). Sum + separators + indent stays below 80.
_COLS = (("STREAM", 14), ("STATE", 12), ("RATE Hz", 9), ("WINDOWS", 7),
         ("SCORE/THR", 13), ("ALARMS", 7), ("DROPS", 8))  # fmt: skip
SCORE_CHARS = 6  # per number: "0.0339/0.0561" fills the SCORE/THR column
RATE_CHARS = 5  # "199.8/200"


def _cut(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def _wrap(text: str, width: int, bullet: str) -> list[str]:
    # Paths and hostnames carry hyphens: break only at spaces (or inside overlong words).
    return textwrap.wrap(
        text, width, initial_indent=bullet, subsequent_indent="   ", break_on_hyphens=False
    )


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _compact(n: int) -> str:
    if n < 100_000:
        return str(n)
    if n < 100_000_000:
        return f"{n / 1000:.1f}k" if n < 1_000_000 else f"{n / 1e6:.1f}M"
    return f"{n / 1e9:.1f}G"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover - loop always returns


def _exp(text: str) -> str:
    return text.replace("e+", "e").replace("e-0", "e-").replace("e0", "e")


def _short(v: float | None, chars: int, digits: int = 3) -> str:
    """`v` with up to `digits` significant digits in at most `chars` characters:
    fewer digits or a short exponent when it would not fit (0.0339, 12346, 1.2e-4)."""
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    text = _exp(f"{v:.{digits}g}")
    if "e" not in text and len(text) <= chars:
        return text
    if abs(v) >= 1 and len(whole := f"{v:.0f}") <= chars:
        return whole  # 12346 reads better than 1.23e4
    for d in range(digits, 0, -1):
        for cand in (f"{v:.{d}g}", f"{v:.{d - 1}e}"):
            text = _exp(cand)
            if len(text) <= chars:
                return text
    return text  # cut by the column


def _calibration_line(cal: Any) -> str:
    """On-site calibration of one stream, or "" when it has none; a second line with
    its note (carried over to an updated model, or not applied to it)."""
    note = get(cal, "note", str, "")
    line = _calibration_state(cal)
    if note:
        line = f"{line}\n    calibration: {note}" if line else f"    calibration: {note}"
    live = _live_calibration(get(cal, "live", dict, {}))
    if live:
        line = f"{line}\n{live}" if line else live
    return line


def _live_calibration(live: Any) -> str:
    """A remote `calibrate` in progress, or one that did not apply (applied: the line above)."""
    state = get(live, "state", str, "")
    if state == "collecting":
        got, need = get(live, "collected", int, 0), get(live, "needed", int, 0)
        return f"    re-calibrating (remote): {got}/{need} samples, still scoring"
    if state in ("fitting", "applying"):
        return f"    re-calibrating (remote): {state}"
    if state in ("failed", "discarded"):
        why = get(live, "error", str, "") or get(live, "reason", str, "")
        return f"    remote calibration {state.upper()}: {why}"[:78]
    return ""


def _calibration_state(cal: Any) -> str:
    state = get(cal, "state", str, "none")
    if state == "calibrated":
        return (
            f"    calibrated on site: {get(cal, 'n_windows', int, 0)} windows, "
            f"threshold {_short(num(cal, 'threshold'), 10)}"
        )
    if state == "calibrating":
        got, need = get(cal, "collected", int, 0), get(cal, "needed", int, 0)
        return f"    calibrating: {got}/{need} samples (not scored yet)"
    if state == "failed":
        return f"    calibration FAILED: {get(cal, 'error', str, '')}"[:78]
    return ""


def _drops(queue: int, withheld: int) -> str:
    """Queue drops ("q") and windows withheld for bad samples ("w") kept apart."""
    parts = [f"{_compact(n)}{tag}" for n, tag in ((queue, "q"), (withheld, "w")) if n]
    return "+".join(parts) or "0"


def render_text(snap: Snapshot, a: Assessment, now: float, *, width: int = DEFAULT_WIDTH) -> str:
    st = snap.state or {}
    lines: list[str] = []
    head = f"edge-agent status: {a.verdict.value}" + (
        " (STALE: last known state)" if a.stale else ""
    )
    ident = "  ".join(
        x for x in (get(st, "device_id", str, ""), get(st.get("profile"), "name", str, "")) if x
    )
    pad = width - len(head) - len(ident)
    lines.append(head + " " * pad + ident if ident and pad >= 2 else head)
    for r in a.reasons:
        lines += _wrap(r, width, " ! ")
    for n in a.notes:
        lines += _wrap(n, width, " - ")
    if snap.state is None:
        lines.append(f"{'state':<{LABEL}}{snap.state_dir}")
        return "\n".join(_cut(x, width) for x in lines) + "\n"
    lines += _agent_lines(st, a, now)
    lines += _stream_lines(get(st, "streams", list, []))
    lines += _link_lines(st, now)
    lines += _error_lines(get(st, "errors", list, []), now)
    lines.append(f"{'state':<{LABEL}}{snap.state_dir}")
    return "\n".join(_cut(x, width) for x in lines) + "\n"


def _agent_lines(st: Mapping[str, Any], a: Assessment, now: float) -> list[str]:
    started = num(st, "started_at")
    up = f"up {fmt_duration(now - started)}" if started is not None else "uptime unknown"
    parts = [f"pid {get(st, 'pid', int, 0)}", up, f"v{get(st, 'agent_version', str, '?')}"]
    written = num(st, "written_at")
    if written is not None:
        age = fmt_duration(now - written)
        parts.append(f"written {_clock(written)} ({age} ago)" if a.stale else f"updated {age} ago")
    out = [f"{'agent':<{LABEL}}" + ", ".join(parts)]
    prof = st.get("profile")
    pname = get(prof, "name", str, "")
    if pname:
        why = get(prof, "reason", str, "")
        out.append(f"{'profile':<{LABEL}}{pname}" + (f" ({why})" if why else ""))
    return out


def _score_lines(s: Any) -> list[str]:
    """Scores that are not plain numbers: NaN/inf from the model (a model fault, not
    alarmed) and windows beyond the model's range (saturated, alarmed). One line each,
    so both fit 80 columns."""
    out = []
    nonfinite = get(s, "nonfinite_scores", int, 0)
    if nonfinite:
        out.append(f"    scores: {_compact(nonfinite)} NaN/inf from the model (not alarmed)")
    saturated = get(s, "saturated_windows", int, 0)
    if saturated:
        out.append(f"    scores: {_compact(saturated)} windows beyond the model's range")
    return out


# Source counters of input that was rejected (status --json has every counter): a
# stream that says "stalled" while its sensor sends garbage must show the garbage.
_REJECTED = (
    ("bad_lines", "bad lines"),
    ("decimal_comma_lines", "with decimal commas"),
    ("oversized_lines", "oversized lines"),
    ("partial_lines", "partial lines"),
    ("crc_errors", "CRC errors"),
    ("lost_frames", "lost frames"),
    ("oversized_frames", "oversized frames"),
    ("bad_rows", "bad rows"),
    ("decimal_comma_rows", "with decimal commas"),
    ("bad_times", "bad times"),
    ("bad_messages", "bad messages"),
    ("oversized_messages", "oversized messages"),
)


def _input_line(s: Any) -> list[str]:
    """One line of rejected input counts, e.g. "input: 12 bad lines, 3 oversized lines"."""
    counters = s.get("counters") if isinstance(s, Mapping) else None
    parts = [
        f"{_compact(n)} {label}"
        for key, label in _REJECTED
        if (n := get(counters, key, int, 0)) > 0
    ]
    return ["    input: " + ", ".join(parts)] if parts else []


def _stream_lines(streams: list[Any]) -> list[str]:
    if not streams:
        return [f"{'streams':<{LABEL}}none"]
    out = ["  " + " ".join(f"{h:<{w}}" if i < 2 else f"{h:>{w}}" for i, (h, w) in enumerate(_COLS))]
    for s in streams:
        conf, meas = num(s, "rate_hz_configured"), num(s, "rate_hz_measured")
        rate = f"{_short(meas, RATE_CHARS, 4)}/{_short(conf, RATE_CHARS, 4)}"
        score = (
            f"{_short(num(s, 'last_score'), SCORE_CHARS)}"
            f"/{_short(num(s, 'threshold'), SCORE_CHARS)}"
        )
        alarm = ("OPEN " if get(s, "alarm_open", bool, False) else "") + _compact(
            get(s, "alarms", int, 0)
        )
        queue, withheld = get(s, "dropped_blocks", int, 0), get(s, "skipped_windows", int, 0)
        cells = (
            get(s, "name", str, "?"),
            get(s, "source_state", str, "?"),
            rate,
            _compact(get(s, "windows", int, 0)),
            score,
            alarm,
            _drops(queue, withheld),
        )
        row = []
        for i, ((_, w), cell) in enumerate(zip(_COLS, cells, strict=True)):
            c = _cut(cell, w)
            row.append(f"{c:<{w}}" if i < 2 else f"{c:>{w}}")
        out.append("  " + " ".join(row))
        m = s.get("model") if isinstance(s, Mapping) else None
        detail = [get(s, "source_kind", str, "?")]
        if isinstance(m, Mapping):
            prov = ",".join(str(p) for p in get(m, "providers", list, []))
            detail.append(
                f"model {get(m, 'name', str, '?')} v{get(m, 'version', int, 0)}"
                f" {get(m, 'backend', str, '')} {get(m, 'precision', str, '')}"
                + (f" [{prov}]" if prov else "")
            )
        restarts = get(s, "restarts", int, 0)
        if restarts:
            detail.append(f"{restarts} restarts")
        out.append("    " + "; ".join(detail))
        lost = []
        if queue:
            lost.append(f"{queue} blocks dropped, queue full (q)")
        if withheld:
            lost.append(f"{withheld} windows withheld, bad samples (w)")
        if lost:
            out.append("    drops: " + "; ".join(lost))
        gaps = get(s, "gaps", int, 0)
        if gaps:  # reconnects, lost frames, skipped lines, time jumps: no window spans one
            out.append(f"    holes: {_compact(gaps)} in the data, windowing restarted after each")
        out += _input_line(s)
        out += _score_lines(s)
        sh = s.get("sensor_health") if isinstance(s, Mapping) else None
        faults = [str(c) for c in get(sh, "active", list, []) if c]
        if faults:
            out.append("    sensor: " + ", ".join(faults))
        cal_line = _calibration_line(s.get("calibration") if isinstance(s, Mapping) else None)
        if cal_line:
            out.extend(cal_line.splitlines())
        err = get(s, "source_error", str, "")
        if err:
            out.append(f"    error: {err}")
    return out


def _link_lines(st: Mapping[str, Any], now: float) -> list[str]:
    out = []
    m = st.get("mqtt")
    if not get(m, "enabled", bool, False):
        out.append(f"{'mqtt':<{LABEL}}disabled")
    else:
        broker = get(m, "broker", str, "?")
        since = num(m, "since")
        dur = f" for {fmt_duration(now - since)}" if since is not None else ""
        if get(m, "connected", bool, False):
            line = f"connected to {broker}{dur}"
        else:
            line = f"NOT CONNECTED to {broker}{dur}"
            err = get(m, "last_error", str, "")
            line += f" ({err})" if err else ""
        extra = [
            f"{k.replace('_', ' ')} {v}"
            for k in ("reconnects", "refused", "acl_denied")
            if (v := get(m, k, int, 0))
        ]
        out.append(f"{'mqtt':<{LABEL}}{line}" + (", " + ", ".join(extra) if extra else ""))
    ob = st.get("outbox")
    if isinstance(ob, Mapping):
        depth = get(ob, "depth", int, 0)
        line = "empty" if depth == 0 else f"{depth} queued ({_bytes(get(ob, 'bytes', int, 0))})"
        oldest = num(ob, "oldest_age_s")
        if depth and oldest is not None:
            line += f", oldest {fmt_duration(oldest)}"
        drops = {k: v for k, v in get(ob, "drops", dict, {}).items() if isinstance(v, int) and v}
        line += "; drops " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none")
        out.append(f"{'outbox':<{LABEL}}{line}")
    ota = st.get("ota")
    if isinstance(ota, Mapping):
        slot = ota.get("active_slot")
        where = (
            f"active slot {slot} v{get(ota, 'active_version', int, 0)}"
            if isinstance(slot, str)
            else "no OTA slot: the bundled model serves"
        )
        line = f"{get(ota, 'state', str, '?')}; {where}"
        last = get(ota, "last_result", str, "")
        out.append(f"{'ota':<{LABEL}}{line}" + (f"; last: {last}" if last else ""))
        note = get(ota, "note", str, "")  # why updates are off, e.g. no trusted root
        if note:
            out.append(f"{'':<{LABEL}}{note}")
    return out


def _error_lines(errors: list[Any], now: float) -> list[str]:
    if not errors:
        return [f"{'errors':<{LABEL}}none"]
    shown = errors[-MAX_ERRORS_SHOWN:]
    out = [f"{'errors':<{LABEL}}{len(errors)} recent, newest last:"]
    for e in shown:
        ts = num(e, "ts")
        when = f"{fmt_duration(now - ts)} ago" if ts is not None else "?"
        out.append(f"  {when:>10}  {get(e, 'where', str, '?')}: {get(e, 'message', str, '')}")
    return out
