"""Agent configuration: TOML in, frozen typed dataclasses out.

The dataclasses below are the schema (documented in docs/configuration.md). Each
source kind validates its own table through the options class it registers, so a
new source adds keys without touching this file.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edge_agent.errors import ConfigError
from edge_agent.identity import machine_default_device_id
from edge_agent.pipeline.baseline_config import BaselineConfig
from edge_agent.pipeline.health_config import SensorHealthConfig
from edge_agent.schema import check, from_mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

__all__ = [
    "AgentConfig",
    "AlarmConfig",
    "HealthConfig",
    "HomeAssistantConfig",
    "LoggingConfig",
    "MetricsConfig",
    "MqttConfig",
    "OtaConfig",
    "OutboxConfig",
    "ServingConfig",
    "SourceSpec",
    "StreamConfig",
    "TlsConfig",
    "default_state_dir",
    "demo_stream",
    "load_config",
    "parse_config",
    "user_state_dir",
]

DEFAULT_STATE_DIR = "/var/lib/edge-agent"


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # Only for lab brokers with self-made certs; never in production.
    insecure: bool = False


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=check("port"))
    prefix: str = field(default="edge", metadata=check("nonempty"))
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str = ""
    keepalive_s: int = field(default=30, metadata=check("positive"))
    username: str = ""
    # The password never goes on a command line: a file, or a systemd credential name
    # looked up in $CREDENTIALS_DIRECTORY.
    password_file: str = ""
    password_credential: str = ""
    max_inflight: int = field(default=20, metadata=check("positive"))
    telemetry_interval_s: float = field(default=60.0, metadata=check("positive"))
    reconnect_min_s: float = field(default=1.0, metadata=check("positive"))
    reconnect_max_s: float = field(default=60.0, metadata=check("positive"))
    # MQTT 5: how long the broker keeps our session (queued command messages, in-flight
    # state) after we drop off. 3.1.1 sessions (clean_session=false) never expire.
    session_expiry_s: int = field(default=86400, metadata=check("nonneg"))
    # A PUBACK slower than this on a live connection means the broker is wedged: reconnect.
    ack_timeout_s: float = field(default=30.0, metadata=check("positive"))
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class OutboxConfig:
    max_bytes: int = field(default=64 * 1024 * 1024, metadata=check("positive"))
    # "always": fsync every commit (no acknowledged record is ever lost on power loss);
    # "normal": fsync at WAL checkpoints (faster on slow SD cards, may lose the last commits).
    sync: Literal["always", "normal"] = "always"


@dataclass(frozen=True)
class OtaConfig:
    enabled: bool = True
    group: str = "default"
    root_file: str = ""
    shadow_windows: int = field(default=200, metadata=check("positive"))
    trial_windows: int = field(default=500, metadata=check("positive"))
    max_bundle_bytes: int = field(default=64 * 1024 * 1024, metadata=check("positive"))
    # a failed download (network, server) is tried again by itself, backing off
    retry_min_s: float = field(default=10.0, metadata=check("positive"))
    retry_max_s: float = field(default=600.0, metadata=check("positive"))
    # file:// URLs in announcements are accepted only for files under this directory
    # (an operator's USB stick or share); empty: never (a URL from the network must not
    # name local files)
    local_bundle_dir: str = ""
    # The TUF update channel (docs/ota.md): image and director repository base URLs and
    # the installed trusted root of each; devices refresh every refresh_s (+-10 %) and
    # at once on an MQTT hint
    image_url: str = ""
    director_url: str = ""
    image_root_file: str = ""
    director_root_file: str = ""
    refresh_s: float = field(default=3600.0, metadata=check("positive"))


@dataclass(frozen=True)
class HealthConfig:
    watchdog: bool = True
    restart_budget: int = field(default=5, metadata=check("positive"))
    restart_window_s: float = field(default=60.0, metadata=check("positive"))
    # a supervised component past its budget is tried again this often (fresh budget)
    retry_failed_s: float = field(default=300.0, metadata=check("positive"))
    stall_after_s: float = field(default=10.0, metadata=check("positive"))


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = field(default=9108, metadata=check("port"))


@dataclass(frozen=True)
class ServingConfig:
    """The local Open Inference Protocol endpoint (docs/serving.md); off by default."""

    enabled: bool = False
    # a unix socket path (access by its file mode); empty: loopback TCP host:port
    socket: str = ""
    socket_mode: int = field(default=0o660, metadata=check("nonneg"))
    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=check("port"))
    allow_remote: bool = False  # a non-loopback host is refused unless this is true
    # a file holding the bearer token clients must send; required on TCP
    token_file: str = ""
    max_body_kb: int = field(default=1024, metadata=check("positive"))
    rate_per_s: float = field(default=200.0, metadata=check("positive"))
    max_inflight: int = field(default=4, metadata=check("positive"))
    max_connections: int = field(default=16, metadata=check("positive"))
    deadline_ms: float = field(default=100.0, metadata=check("positive"))

    def __post_init__(self) -> None:
        if not self.enabled or self.socket:
            return
        import ipaddress

        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = self.host == "localhost"
        if not loopback and not self.allow_remote:
            raise ValueError(
                f"host = {self.host!r} is not a loopback address: the endpoint would be "
                "reachable from the network. Use 127.0.0.1 or a socket, or set allow_remote = true"
            )
        if not self.token_file:
            raise ValueError(
                "on TCP it needs token_file (any local user could ask otherwise); "
                "or listen on a unix socket (socket = PATH) and rely on its file mode"
            )


@dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery (docs/homeassistant.md); needs MQTT enabled."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    # each stream's score/threshold state at most this often (a threshold change at once)
    state_interval_s: float = field(default=10.0, metadata=check("positive"))

    def __post_init__(self) -> None:
        from edge_agent.reporting.ha_discovery import valid_discovery_prefix

        try:
            valid_discovery_prefix(self.discovery_prefix)
        except ConfigError as e:  # the config loader adds the file and the table
            raise ValueError(str(e)) from None


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "plain", "journal"] = "auto"


@dataclass(frozen=True)
class AlarmConfig:
    """Zero means "take it from the model card"."""

    threshold: float = field(default=0.0, metadata=check("nonneg"))
    min_on: int = field(default=0, metadata=check("nonneg"))
    min_off: int = field(default=0, metadata=check("nonneg"))
    hysteresis: float = field(default=0.0, metadata=check("nonneg"))


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    options: Any  # the kind's own frozen options dataclass

    def with_default_channels(self, channels: tuple[str, ...]) -> SourceSpec:
        """This source with `channels` (the model card's) where its options leave the
        channel names out (`channels = []`, the default of serial and mqtt sources)."""
        if not dataclasses.is_dataclass(self.options) or isinstance(self.options, type):
            return self
        names = {f.name for f in dataclasses.fields(self.options)}
        if "channels" not in names or getattr(self.options, "channels", None) != ():
            return self
        return SourceSpec(self.kind, replace(self.options, channels=tuple(channels)))


def _parse_source(raw: Any, path: str, source: str) -> SourceSpec:
    from edge_agent.sources.registry import options_type, source_kinds

    if not isinstance(raw, dict):
        raise ConfigError(f'{source}: {path}: expected a table like {{kind = "synthetic"}}')
    kind = raw.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{source}: {path}.kind: required, one of {', '.join(source_kinds())}")
    try:
        opts_cls = options_type(kind)
    except KeyError:
        raise ConfigError(
            f"{source}: {path}.kind: unknown source kind {kind!r} "
            f"(known: {', '.join(source_kinds())})"
        ) from None
    rest = {k: v for k, v in raw.items() if k != "kind"}
    return SourceSpec(kind, from_mapping(opts_cls, rest, source=source, path=path))


@dataclass(frozen=True)
class StreamConfig:
    name: str = field(metadata=check("nonempty"))
    source: SourceSpec = field(metadata={"parse": _parse_source})
    model: str = "vibration-ae"
    # "auto": the device profile's preference; else "<precision>-<backend>", e.g. "int8-onnx".
    variant: str = "auto"
    window: int = field(default=0, metadata=check("nonneg"))
    hop: int = field(default=0, metadata=check("nonneg"))
    max_batch: int = field(default=64, metadata=check("positive"))
    queue_blocks: int = field(default=256, metadata=check("positive"))
    # > 0: with no valid stored calibration, fit one on the stream's first N windows
    calibrate_windows: int = field(default=0, metadata=check("nonneg"))
    alarm: AlarmConfig = field(default_factory=AlarmConfig)
    sensor_health: SensorHealthConfig = field(default_factory=SensorHealthConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)


@dataclass(frozen=True)
class AgentConfig:
    # the host name; made unique with the machine id when it is a distribution default
    # (raspberrypi, ubuntu, ...): see edge_agent.identity
    device_id: str = field(default_factory=machine_default_device_id)
    state_dir: str = DEFAULT_STATE_DIR
    profile: str = "auto"
    models_dir: str = ""
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    streams: tuple[StreamConfig, ...] = ()
    source_file: str = field(default="", compare=False, metadata={"internal": True})


def parse_config(data: dict[str, Any], *, source: str = "<config>") -> AgentConfig:
    """Validate a parsed TOML document. Pure: no file access."""
    data = dict(data)
    streams_raw = data.pop("streams", [])
    if not isinstance(streams_raw, list):
        raise ConfigError(f"{source}: streams: expected an array of tables ([[streams]])")
    cfg = from_mapping(AgentConfig, data, source=source)
    streams = []
    names: set[str] = set()
    for i, s in enumerate(streams_raw):
        p = f"streams[{i}]"
        if not isinstance(s, dict):
            raise ConfigError(f"{source}: {p}: expected a table")
        st = from_mapping(StreamConfig, s, source=source, path=p)
        if st.name in names:
            raise ConfigError(f"{source}: {p}.name: duplicate stream name {st.name!r}")
        names.add(st.name)
        streams.append(st)
    if not cfg.device_id or "/" in cfg.device_id or "+" in cfg.device_id or "#" in cfg.device_id:
        raise ConfigError(f"{source}: device_id: must be non-empty without '/', '+' or '#'")
    return replace(cfg, streams=tuple(streams), source_file=source)


def load_config(path: str | Path) -> AgentConfig:
    p = Path(path)
    try:
        # utf-8-sig: Windows editors (Notepad) put a byte order mark in front
        text = p.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except UnicodeDecodeError as e:
        utf16 = e.object[:2] in (b"\xff\xfe", b"\xfe\xff")
        what = 'a UTF-16 ("Unicode") file' if utf16 else f"not UTF-8 text (byte {e.start})"
        raise ConfigError(
            f"{p}: {what}: save it as UTF-8 (e.g. Notepad: Save As, Encoding UTF-8)"
        ) from e
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from e
    return parse_config(data, source=p.name)


def user_state_dir() -> Path:
    """Where a non-root user's agent keeps state when /var/lib/edge-agent is not theirs."""
    import os

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-agent"


def default_state_dir() -> Path:
    """/var/lib/edge-agent if usable (the service), else the user's state dir."""
    import os

    p = Path(DEFAULT_STATE_DIR)
    if (p.is_dir() and os.access(p, os.W_OK)) or (not p.exists() and os.access(p.parent, os.W_OK)):
        return p
    return user_state_dir()


def demo_stream(*, fast: bool) -> StreamConfig:
    """The embedded demo: synthetic vibration signal + the bundled model.

    With `fast` (a run bounded by a number of windows) it goes as fast as scoring
    allows; otherwise (forever, or for a --duration) it runs in real time like a sensor."""
    from edge_agent.sources.synthetic import Options

    return StreamConfig(
        name="demo",
        # one block per hop of the bundled model (16): a window is handed over as soon
        # as its last sample exists, not when a longer block ends
        source=SourceSpec("synthetic", Options(speed=0.0 if fast else 1.0, block=16)),
        model="vibration-ae",
    )
