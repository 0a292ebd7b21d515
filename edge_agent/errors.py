"""The one exception hierarchy. Foreign errors are translated where they enter.

Messages say what was wrong and, where it helps, what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BrokerUnreachableError",
    "BudgetExceededError",
    "CalibrationError",
    "ConfigError",
    "EdgeAgentError",
    "MetricsError",
    "ModelError",
    "OutboxError",
    "OverloadError",
    "PacketTooLargeError",
    "PublishError",
    "ServingError",
    "SourceDisconnectedError",
    "SourceError",
    "StateError",
]


class EdgeAgentError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(EdgeAgentError):
    """A configuration file or value is invalid. The message names file and key path."""


class ModelError(EdgeAgentError):
    """A model or its card is missing, corrupt, or does not match its card."""


class BackendUnavailableError(ModelError):
    """The inference runtime a model needs is not installed or failed to load."""


class BudgetExceededError(ModelError):
    """A model would exceed the device profile's memory or latency budget."""


class OverloadError(EdgeAgentError):
    """Work that cannot be served in time (an inference queue is full, or a deadline
    cannot be met): refused at once, to be retried later."""


class DeadlineError(OverloadError):
    """Work refused because its deadline cannot be met, or passed while it was queued
    (not because a queue is full): a longer deadline may help, a retry alone may not."""


class CalibrationError(EdgeAgentError):
    """Calibration data cannot give a trustworthy normalisation or threshold (a constant
    or non-finite channel, too few samples), or a stored calibration is unusable."""


class SourceError(EdgeAgentError):
    """A sensor source failed (device gone, bad data that cannot be skipped)."""


class SourceDisconnectedError(SourceError):
    """The sensor device or broker went away (unplugged, re-enumerating, link down).

    Expected on a shop floor: the runner reconnects with backoff for as long as it
    takes, without spending its restart budget (which is for crash loops)."""


class PublishError(EdgeAgentError):
    """The MQTT link failed (refused CONNACK, TLS, ACL denial)."""


class BrokerUnreachableError(PublishError):
    """The broker cannot be reached now (down, network): wait and retry, not a config fault."""


class PacketTooLargeError(PublishError):
    """A message is larger than the broker accepts: refuse it (never retry), count it."""


class OutboxError(EdgeAgentError):
    """The durable outbox could not store or read a record."""


class StateError(EdgeAgentError):
    """The state directory or a state file could not be read or written."""


class ServingError(EdgeAgentError):
    """The local inference endpoint cannot listen (address taken, token file unreadable)."""


class MetricsError(EdgeAgentError):
    """A metric was used against its declaration, or the metrics endpoint cannot listen."""
