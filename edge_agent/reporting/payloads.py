"""JSON payloads: one envelope `{"v": 1, "device", "seq", "ts", ...}` and a builder per kind.

Pure functions, time passed in. Schemas in docs/schemas/ describe exactly what these make.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from edge_agent.errors import PublishError

__all__ = [
    "ENVELOPE_KEYS",
    "PAYLOAD_VERSION",
    "command_reply",
    "decode_command",
    "encode",
    "envelope",
    "event_body",
    "ota_state_body",
    "sensor_event_body",
    "status_offline",
    "status_online",
    "telemetry_body",
]

PAYLOAD_VERSION = 1
ENVELOPE_KEYS = frozenset({"v", "device", "seq", "ts"})
# A command request larger than this is refused unread.
MAX_COMMAND_BYTES = 16 * 1024


def envelope(device: str, seq: int, ts: float, body: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap a body in the envelope. The body may not set envelope keys itself."""
    clash = ENVELOPE_KEYS & set(body)
    if clash:
        raise PublishError(
            f"payload sets reserved envelope key(s) {sorted(clash)}; the reporter sets them"
        )
    return {"v": PAYLOAD_VERSION, "device": device, "seq": seq, "ts": round(ts, 6), **body}


def encode(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON; NaN/Infinity are refused (they are not JSON)."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise PublishError(f"payload is not JSON-serialisable: {e}") from e


def status_online(birth: Mapping[str, Any]) -> dict[str, Any]:
    """Body of the retained birth message; `birth` comes from the agent's callback."""
    return {**birth, "state": "online"}


def status_offline(*, clean: bool) -> dict[str, Any]:
    """Body of the retained death message: clean stop, or the broker's Last Will."""
    return {"state": "offline", "clean": clean}


def decode_command(payload: bytes) -> dict[str, Any]:
    """A command request: empty, or a JSON object. Anything else raises PublishError."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise PublishError(f"command payload of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}")
    if not payload.strip():
        return {}
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise PublishError(f"command payload is not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise PublishError("command payload must be a JSON object")
    return obj


def command_reply(
    device: str,
    ts: float,
    command: str,
    *,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A reply: `ok` with `result`, or not `ok` with `error`. Replies carry no seq."""
    body: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "device": device,
        "ts": round(ts, 6),
        "command": command,
        "ok": error is None,
    }
    if error is None:
        body["result"] = dict(result or {})
    else:
        body["error"] = error
    return body


def _finite(x: float) -> float | None:
    """Scores can be NaN on a broken model; JSON has no NaN, so report null."""
    return x if math.isfinite(x) else None


EVENT_TYPES = ("start", "end")
OTA_STATES = (
    "announced",
    "downloading",
    "verifying",
    "validating",
    "shadow",
    "promoted",
    "committed",
    "rolled_back",
    "rejected",
    "failed",
    "stale",  # the update channel's signed timestamp expired; the serving model is kept
)


def event_body(
    *,
    event: str,
    stream: str,
    score: float,
    threshold: float,
    model: str,
    model_version: int,
    t_start: float,
    t_end: float | None = None,
    peak_score: float | None = None,
    t_sample: float | None = None,
    window: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """An anomaly start or end on one stream (times are sample times, epoch seconds).

    `t_sample` is the time of the sample that decided this transition (the deciding
    window's last sample); `window` is that window as (first sample index in the
    source's sample count, samples in it)."""
    if event not in EVENT_TYPES:
        raise PublishError(f"event must be one of {EVENT_TYPES}, got {event!r}")
    body: dict[str, Any] = {
        "event": event,
        "stream": stream,
        "score": _finite(score),
        "threshold": threshold,
        "model": model,
        "model_version": model_version,
        "t_start": t_start,
    }
    if t_end is not None:
        body["t_end"] = t_end
    if peak_score is not None:
        body["peak_score"] = _finite(peak_score)
    if t_sample is not None:
        body["t_sample"] = t_sample
    if window is not None:
        body["window"] = {"first_sample": window[0], "samples": window[1]}
    return body


def telemetry_body(
    *,
    stream: str,
    interval_s: float,
    windows: int,
    score_mean: float | None,
    score_max: float | None,
    alarms: int,
    drops: int,
    model_version: int | None = None,
) -> dict[str, Any]:
    """A per-stream summary over the last telemetry interval."""
    return {
        "stream": stream,
        "interval_s": interval_s,
        "windows": windows,
        "score_mean": None if score_mean is None else _finite(score_mean),
        "score_max": None if score_max is None else _finite(score_max),
        "alarms": alarms,
        "drops": drops,
        "model_version": model_version,
    }


def ota_state_body(
    *,
    state: str,
    version: int | None,
    slot: str | None = None,
    detail: str = "",
    figures: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Progress or result of a model update; `figures`: the measurements behind a
    decision (latency, shadow alarm rates and score medians, trial counts)."""
    if state not in OTA_STATES:
        raise PublishError(f"OTA state must be one of {OTA_STATES}, got {state!r}")
    body: dict[str, Any] = {"state": state, "version": version, "slot": slot, "detail": detail}
    if figures:
        body["figures"] = {k: _finite(v) if isinstance(v, float) else v for k, v in figures.items()}
    return body


SENSOR_EVENT_TYPES = ("sensor_fault_start", "sensor_fault_end")


def sensor_event_body(
    *, stream: str, condition: str, channel: str, active: bool, detail: str, t: float
) -> dict[str, Any]:
    """A sensor fault (not a process anomaly) started or ended; on the events topic,
    told apart from anomaly events by `event` (schema: sensor_event.json)."""
    return {
        "event": SENSOR_EVENT_TYPES[0] if active else SENSOR_EVENT_TYPES[1],
        "stream": stream,
        "condition": condition,
        "channel": channel,
        "detail": detail,
        "t": t,
    }
