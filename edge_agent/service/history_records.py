"""History records of the agent's events (pure: event values in, JSON-ready dicts out).

`t_sample` is the source time (epoch seconds) of the sample that decided the event: the
last sample of the window that opened or closed an alarm, or the sensor-health check's.
"""

from __future__ import annotations

import math
from typing import Any

from edge_agent.pipeline.alarms import Transition
from edge_agent.pipeline.sensor_health import HealthEvent
from edge_agent.pipeline.stream import AnomalyEvent

__all__ = ["anomaly_record", "sensor_record"]


def _num(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no NaN/inf


def anomaly_record(ev: AnomalyEvent) -> dict[str, Any]:
    start = ev.transition is Transition.START
    rec: dict[str, Any] = {
        "kind": "anomaly",
        "event": ev.transition.value,
        "stream": ev.stream,
        "t_sample": ev.ts,
        "t_start": ev.started_ts,
        "score": _num(ev.score),
        "peak_score": _num(ev.peak),
        "threshold": ev.threshold,
        "model": ev.model,
        "model_version": ev.model_version,
    }
    if ev.window_samples:
        rec["window"] = {"first_sample": ev.window_start, "samples": ev.window_samples}
    if not start:
        rec["t_end"] = ev.ts
        rec["duration_s"] = ev.ts - ev.started_ts
        rec["windows"] = ev.windows
    return rec


def sensor_record(ev: HealthEvent) -> dict[str, Any]:
    return {
        "kind": "sensor",
        "event": "start" if ev.active else "end",
        "stream": ev.stream,
        "t_sample": ev.ts,
        "condition": ev.condition.value,
        "channel": ev.channel,
        "detail": ev.detail,
    }
