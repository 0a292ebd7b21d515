"""The agent's Prometheus metric families, built from one status snapshot.

Pure: the status dict (the status.json shape) and the time go in, prometheus_client
metric families come out; nothing is counted twice in two places, so what `edge-agent
status` shows and what Prometheus scrapes cannot disagree. Every family in FAMILIES is
documented in docs/metrics.md (a test holds the two together) and carries at least one
sample whenever the agent has a stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from edge_agent.pipeline.sensor_health import HealthCondition
from edge_agent.service.status import Snapshot, Verdict, assess, num
from edge_agent.sources.runner import SourceState

__all__ = ["FAMILIES", "MAX_SERIES_PER_FAMILY", "Fam", "families"]

# Bounds what one family can hold (source counters are keyed by register or node): a
# misbehaving source must not grow the scrape without limit.
MAX_SERIES_PER_FAMILY = 256


@dataclass(frozen=True)
class Fam:
    name: str  # as exposed (counters end in _total)
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()


FAMILIES: tuple[Fam, ...] = (
    Fam("edge_agent_info", "gauge", "Always 1; the labels say which agent this is.",
        ("version", "device", "profile")),
    Fam("edge_agent_up_seconds", "gauge", "Seconds since the agent started."),
    Fam("edge_agent_ready", "gauge", "1 once the agent is ready (READY=1 sent)."),
    Fam("edge_agent_health", "gauge",
        "1 for the agent's current verdict (as `edge-agent status`), 0 for the others.",
        ("verdict",)),
    Fam("edge_agent_component_restarts_total", "counter",
        "Restarts of a supervised component.", ("component",)),
    Fam("edge_agent_samples_total", "counter", "Samples read from the source.", ("stream",)),
    Fam("edge_agent_windows_total", "counter", "Windows scored.", ("stream",)),
    Fam("edge_agent_skipped_windows_total", "counter",
        "Windows not scored (invalid samples, or the pipeline behind).", ("stream",)),
    Fam("edge_agent_dropped_blocks_total", "counter",
        "Source blocks dropped by the bounded queue.", ("stream",)),
    Fam("edge_agent_source_restarts_total", "counter", "Source reopen attempts after errors.",
        ("stream",)),
    Fam("edge_agent_source_disconnects_total", "counter",
        "Times the source's device or server went away.", ("stream",)),
    Fam("edge_agent_source_state", "gauge", "1 for the source's current state, 0 for the others.",
        ("stream", "state")),
    Fam("edge_agent_source_rate_hz", "gauge",
        "Sample rate: configured, and measured when the source measures it.",
        ("stream", "rate")),
    Fam("edge_agent_source_counter_total", "counter",
        "The source's own counters (bad frames, Modbus exceptions per register, missing "
        "OPC UA nodes, ...).", ("stream", "counter")),
    Fam("edge_agent_sensor_faults", "gauge",
        "Sensor-health conditions active now, by kind (a per-channel kind counts channels).",
        ("stream", "kind")),
    Fam("edge_agent_alarms_total", "counter", "Anomaly alarms opened.", ("stream",)),
    Fam("edge_agent_alarm_open", "gauge", "1 while an alarm is open.", ("stream",)),
    Fam("edge_agent_last_score", "gauge", "Most recent anomaly score.", ("stream",)),
    Fam("edge_agent_threshold", "gauge", "The alarm threshold the stream scores against.",
        ("stream",)),
    Fam("edge_agent_model_version", "gauge",
        "Version of the model serving the stream (follows OTA promotions and rollbacks).",
        ("stream", "model", "backend", "precision")),
    Fam("edge_agent_inference_seconds", "histogram",
        "Model inference time per call (one batch), per loaded model: a model shared by "
        "streams is one series.", ("model",)),
    Fam("edge_agent_mqtt_connected", "gauge",
        "1 while connected to the broker; 0 while not, or MQTT is off."),
    Fam("edge_agent_mqtt_reconnects_total", "counter", "Reconnections to the broker."),
    Fam("edge_agent_outbox_depth", "gauge", "Records waiting in the outbox."),
    Fam("edge_agent_outbox_bytes", "gauge", "Bytes used by waiting records."),
    Fam("edge_agent_outbox_oldest_age_seconds", "gauge",
        "Age of the oldest waiting record (0 when none waits)."),
    Fam("edge_agent_outbox_drops_total", "counter",
        "Records dropped by the outbox disk budget, by record kind.", ("kind",)),
    Fam("edge_agent_ota_phase", "gauge",
        "1 with the OTA updater's current phase as label (off, idle, downloading, ...).",
        ("phase",)),
)  # fmt: skip

_BY_NAME = {f.name: f for f in FAMILIES}


def _family(name: str) -> Any:
    f = _BY_NAME[name]
    labels = list(f.labels)
    if f.kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), f.help, labels=labels)
    if f.kind == "histogram":
        return HistogramMetricFamily(name, f.help, labels=labels)
    return GaugeMetricFamily(name, f.help, labels=labels)


class _Builder:
    def __init__(self) -> None:
        self.fams: dict[str, Any] = {}
        self.series: dict[str, int] = {}

    def add(self, name: str, value: float | None, *labels: str) -> None:
        if value is None:
            return
        fam = self.fams.setdefault(name, _family(name))
        n = self.series.get(name, 0)
        if n >= MAX_SERIES_PER_FAMILY:
            return
        self.series[name] = n + 1
        fam.add_metric(list(labels), float(value))

    def histogram(self, name: str, snap: Mapping[str, Any], *labels: str) -> None:
        buckets = snap.get("buckets_s") or []
        counts = snap.get("counts") or []
        if len(counts) != len(buckets) + 1:
            return
        cum, pairs = 0, []
        for le, c in zip([*buckets, float("inf")], counts, strict=True):
            cum += int(c)
            pairs.append(("+Inf" if le == float("inf") else repr(float(le)), cum))
        fam = self.fams.setdefault(name, _family(name))
        fam.add_metric(list(labels), pairs, float(snap.get("sum_s") or 0.0))


def families(st: Mapping[str, Any], now: float) -> Iterator[Metric]:
    """The metric families for status dict `st` at time `now` (seconds since the epoch)."""
    b = _Builder()
    _agent(b, st, now)
    seen_models: set[str] = set()
    for s in st.get("streams") or []:
        if isinstance(s, Mapping):
            _stream(b, s, seen_models)
    _reporting(b, st)
    _ota(b, st)
    yield from b.fams.values()


def _agent(b: _Builder, st: Mapping[str, Any], now: float) -> None:
    prof = st.get("profile")
    profile = str(prof.get("name", "")) if isinstance(prof, Mapping) else ""
    b.add("edge_agent_info", 1.0, str(st.get("agent_version", "")),
          str(st.get("device_id", "")), profile)  # fmt: skip
    started = num(st, "started_at")
    b.add("edge_agent_up_seconds", max(0.0, now - started) if started else None)
    b.add("edge_agent_ready", 1.0 if st.get("ready") else 0.0)
    verdict = assess(Snapshot("", True, st, pid_alive=True), now).verdict
    for v in Verdict:
        b.add("edge_agent_health", 1.0 if v is verdict else 0.0, v.value)
    sup = st.get("supervisor")
    for c in (sup.get("components") or []) if isinstance(sup, Mapping) else []:
        if isinstance(c, Mapping):
            b.add("edge_agent_component_restarts_total", num(c, "restarts"), str(c.get("name")))


_STREAM_COUNTERS = (
    ("edge_agent_samples_total", "samples"),
    ("edge_agent_windows_total", "windows"),
    ("edge_agent_skipped_windows_total", "skipped_windows"),
    ("edge_agent_dropped_blocks_total", "dropped_blocks"),
    ("edge_agent_source_restarts_total", "restarts"),
    ("edge_agent_source_disconnects_total", "disconnects"),
    ("edge_agent_alarms_total", "alarms"),
    ("edge_agent_last_score", "last_score"),
    ("edge_agent_threshold", "threshold"),
)


def _stream(b: _Builder, s: Mapping[str, Any], seen_models: set[str]) -> None:
    name = str(s.get("name", "?"))
    for fam, key in _STREAM_COUNTERS:
        b.add(fam, num(s, key), name)
    b.add("edge_agent_alarm_open", 1.0 if s.get("alarm_open") else 0.0, name)
    state = str(s.get("source_state", ""))
    for st in SourceState:
        b.add("edge_agent_source_state", 1.0 if st.value == state else 0.0, name, st.value)
    b.add("edge_agent_source_rate_hz", num(s, "rate_hz_configured"), name, "configured")
    b.add("edge_agent_source_rate_hz", num(s, "rate_hz_measured"), name, "measured")
    counters = s.get("counters")
    if isinstance(counters, Mapping):
        for what in sorted(counters):
            b.add("edge_agent_source_counter_total", num(counters, what), name, str(what))
    sh = s.get("sensor_health")
    active = sh.get("active") if isinstance(sh, Mapping) else None
    kinds = [str(a).split(":", 1)[0] for a in active or []]
    for cond in HealthCondition:
        b.add("edge_agent_sensor_faults", float(kinds.count(cond.value)), name, cond.value)
    m = s.get("model")
    if isinstance(m, Mapping):
        model = str(m.get("name", ""))
        b.add("edge_agent_model_version", num(m, "version"), name, model,
              str(m.get("backend", "")), str(m.get("precision", "")))  # fmt: skip
        inference = m.get("inference")
        if isinstance(inference, Mapping) and model not in seen_models:
            seen_models.add(model)
            b.histogram("edge_agent_inference_seconds", inference, model)


def _reporting(b: _Builder, st: Mapping[str, Any]) -> None:
    mq = st.get("mqtt")
    mq = mq if isinstance(mq, Mapping) else {}
    b.add("edge_agent_mqtt_connected", 1.0 if mq.get("enabled") and mq.get("connected") else 0.0)
    b.add("edge_agent_mqtt_reconnects_total", num(mq, "reconnects") or 0.0)
    ob = st.get("outbox")
    ob = ob if isinstance(ob, Mapping) else {}
    b.add("edge_agent_outbox_depth", num(ob, "depth") or 0.0)
    b.add("edge_agent_outbox_bytes", num(ob, "bytes") or 0.0)
    b.add("edge_agent_outbox_oldest_age_seconds", num(ob, "oldest_age_s") or 0.0)
    drops = ob.get("drops")
    for kind in sorted(drops) if isinstance(drops, Mapping) else []:
        b.add("edge_agent_outbox_drops_total", num(drops, kind), str(kind))


def _ota(b: _Builder, st: Mapping[str, Any]) -> None:
    ota = st.get("ota")
    ota = ota if isinstance(ota, Mapping) else {}
    b.add("edge_agent_ota_phase", 1.0, str(ota.get("state") or "off"))
