"""Reporting: the durable outbox and the MQTT link (docs/mqtt.md, docs/adr/0003)."""

from __future__ import annotations

from edge_agent.reporting.outbox import Kind, Outbox
from edge_agent.reporting.reporter import Reporter

__all__ = ["Kind", "Outbox", "Reporter"]
