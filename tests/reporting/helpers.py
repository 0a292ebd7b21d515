"""Shared test helpers for reporting: configs for a test broker, waiting on snapshots."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, parse_config
from edge_agent.reporting.link import MqttLink
from edge_agent.reporting.topics import Topic
from tests.mosquitto import Broker
from tests.subscriber import Received

FAST_RECONNECT = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "keepalive_s": 5}


def config_dict(
    broker: Broker, *, device: str = "gw-01", outbox: dict[str, Any] | None = None, **mqtt: Any
) -> dict[str, Any]:
    return {
        "device_id": device,
        "mqtt": {"host": broker.host, "port": broker.port, **FAST_RECONNECT, **mqtt},
        "outbox": outbox or {},
    }


def make_config(broker: Broker, **kw: Any) -> AgentConfig:
    return parse_config(config_dict(broker, **kw))


def bare_link(broker: Broker, client_id: str, **mqtt: Any) -> MqttLink:
    """An MqttLink to `broker` (config `mqtt` as make_config takes it) with the rest of
    the reporter left out: a {} Last Will on edge/<client_id>/status, no connect or
    message handler."""
    return MqttLink(
        make_config(broker, **mqtt).mqtt,
        client_id=client_id,
        will=lambda: (Topic(f"edge/{client_id}/status"), b"{}"),
        on_connected=lambda _present: None,
        on_message=lambda _msg: None,
    )


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """Enough TOML for our flat config tables (strings, numbers, booleans)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {val(v)}")
    while tables:
        name, t = tables.pop(0)
        lines.append(f"[{name}]")
        for k, v in t.items():
            if isinstance(v, dict):
                tables.append((f"{name}.{k}", v))
            else:
                lines.append(f"{k} = {val(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_until(pred: Callable[[], bool], timeout: float = 60.0, step: float = 0.02) -> bool:
    # generous: a loaded 2-core machine; every caller waits for something to happen
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def event_seqs(msgs: list[Received]) -> list[int]:
    return [int(m.json()["seq"]) for m in msgs if m.topic.endswith("/events")]


def first_occurrences(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    out = []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
