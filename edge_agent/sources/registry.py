"""Source kinds by key. Modules import lazily so a device only loads what it uses
(cv2 only when a camera stream is configured)."""

from __future__ import annotations

import importlib
from typing import Any

from edge_agent.sources.base import Source

__all__ = ["create_source", "options_type", "source_kinds"]

_KINDS: dict[str, str] = {
    "synthetic": "edge_agent.sources.synthetic",
    "replay": "edge_agent.sources.replay",
    "serial": "edge_agent.sources.serial",
    "mqtt": "edge_agent.sources.mqtt_source",
    "modbus": "edge_agent.sources.modbus",
    "opcua": "edge_agent.sources.opcua",
    "camera": "edge_agent.sources.camera",
}


def source_kinds() -> list[str]:
    return sorted(_KINDS)


def _module(kind: str) -> Any:
    return importlib.import_module(_KINDS[kind])


def options_type(kind: str) -> type:
    """The frozen dataclass validating this kind's config table. KeyError if unknown."""
    cls: type = _module(kind).Options
    return cls


def create_source(kind: str, name: str, options: Any) -> Source:
    src: Source = _module(kind).SOURCE_CLASS(name, options)
    return src
