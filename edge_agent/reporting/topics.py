"""MQTT topic names as validated values, and the device's topic layout (docs/mqtt.md)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.errors import ConfigError

__all__ = ["MAX_TOPIC_BYTES", "DeviceTopics", "Topic"]

# The MQTT limit for a UTF-8 string field.
MAX_TOPIC_BYTES = 65535


@dataclass(frozen=True)
class Topic:
    """A concrete topic one may publish to: no wildcards, no empty string, bounded."""

    value: str

    def __post_init__(self) -> None:
        v = self.value
        if not isinstance(v, str) or not v:
            raise ConfigError(f"MQTT topic {v!r}: must be a non-empty string")
        if "+" in v or "#" in v:
            raise ConfigError(f"MQTT topic {v!r}: wildcards '+' and '#' cannot be published to")
        if "\x00" in v:
            raise ConfigError(f"MQTT topic {v!r}: contains a NUL character")
        if len(v.encode()) > MAX_TOPIC_BYTES:
            raise ConfigError(f"MQTT topic: longer than {MAX_TOPIC_BYTES} bytes")

    def child(self, *levels: str) -> Topic:
        return Topic("/".join((self.value, *levels)))

    def __str__(self) -> str:
        return self.value


def _level(name: str, what: str) -> str:
    if not name or "/" in name or "+" in name or "#" in name:
        raise ConfigError(f"{what} {name!r}: must be one non-empty topic level (no '/', '+', '#')")
    return name


@dataclass(frozen=True)
class DeviceTopics:
    """Every topic one device uses, derived from the prefix and the device id."""

    prefix: str
    device: str

    def __post_init__(self) -> None:
        Topic(self.prefix)  # may contain '/', e.g. "plant1/edge"
        _level(self.device, "device id")

    @property
    def base(self) -> Topic:
        return Topic(f"{self.prefix}/{self.device}")

    @property
    def status(self) -> Topic:
        return self.base.child("status")

    @property
    def events(self) -> Topic:
        return self.base.child("events")

    @property
    def telemetry(self) -> Topic:
        return self.base.child("telemetry")

    @property
    def ota_state(self) -> Topic:
        return self.base.child("ota", "state")

    @property
    def commands_filter(self) -> str:
        """The subscription filter for incoming commands (one level per command name)."""
        return f"{self.base.value}/cmd/+"

    def command(self, name: str) -> Topic:
        return self.base.child("cmd", _level(name, "command name"))

    def command_reply(self, name: str) -> Topic:
        """Where replies go when the request carries no MQTT 5 response topic."""
        return self.command(name).child("reply")

    def command_name(self, topic: str) -> str | None:
        """The command name if `topic` is one of this device's command topics."""
        head = f"{self.base.value}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None
