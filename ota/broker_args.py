"""The MQTT broker options of `edge-ota publish` and `edge-ota hint`: the agent's own
`[mqtt]` keys (user name, password from a file, TLS: CA file, client certificate and key
for mTLS, `insecure` for lab brokers). No paho here: the parser is built for every
command."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import MqttConfig, TlsConfig

__all__ = ["MqttTarget", "add_broker_arguments", "target_from_args"]


@dataclass(frozen=True)
class MqttTarget:
    """A broker and how to log in. TLS is on with `tls` or any of the TLS files."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None  # prefer password_file: a command line is visible in ps
    client_id: str = ""
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None  # None with TLS on: the system's CAs
    cert_file: Path | None = None  # client certificate and key: mTLS
    key_file: Path | None = None
    tls_insecure: bool = False  # no host name check: lab brokers only

    @property
    def tls_on(self) -> bool:
        return self.tls or any((self.ca_file, self.cert_file, self.key_file))

    def mqtt_config(self) -> MqttConfig:
        """The agent's `[mqtt]` section that reaches this broker."""
        return MqttConfig(
            host=self.host,
            port=self.port,
            username=self.username or "",
            password_file=str(self.password_file or ""),
            tls=TlsConfig(
                enabled=self.tls_on,
                ca_file=str(self.ca_file or ""),
                cert_file=str(self.cert_file or ""),
                key_file=str(self.key_file or ""),
                insecure=self.tls_insecure,
            ),
        )


def add_broker_arguments(p: argparse.ArgumentParser) -> None:
    """The MQTT broker options of `publish` and `hint` (the agent's `[mqtt]` keys)."""
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password-file", type=Path, help="file holding the MQTT password")
    pw.add_argument("--password", help="the password itself (visible in ps; prefer a file)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
    p.add_argument("--ca-file", type=Path, help="CA that signed the broker's certificate (TLS)")
    p.add_argument("--cert-file", type=Path, help="client certificate (mTLS; with --key-file)")
    p.add_argument("--key-file", type=Path, help="client key (mTLS; with --cert-file)")
    p.add_argument(
        "--tls-insecure", action="store_true", help="skip the host name check (lab brokers only)"
    )


def target_from_args(args: argparse.Namespace) -> MqttTarget:
    return MqttTarget(
        host=args.host,
        port=args.port,
        username=args.username,
        password=args.password,
        password_file=args.password_file,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        tls_insecure=args.tls_insecure,
    )
