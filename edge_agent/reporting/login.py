"""Log in to the broker once, as the agent would, and say what the broker answered.

For `edge-agent selftest`: a real CONNECT with the configured user name, password and
TLS, then a clean DISCONNECT. It uses its own client id (`<client id>-selftest`) and a
clean, non-persistent session, so it neither takes over a running agent's session nor
leaves a session behind, and it sets no Last Will (the device's status stays as it is).
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import MqttConfig
from edge_agent.errors import BrokerUnreachableError, PublishError
from edge_agent.reporting.link import apply_credentials, describe_connect_error

__all__ = ["LOGIN_TIMEOUT_S", "broker_login"]

LOGIN_TIMEOUT_S = 5.0


def broker_login(cfg: MqttConfig, client_id: str, timeout_s: float = LOGIN_TIMEOUT_S) -> str:
    """CONNECT, wait for the CONNACK, DISCONNECT. Returns a one-line verdict; raises
    PublishError with the broker's reason (e.g. `Bad user name or password (reason code
    0x86)`), or ConfigError when a credential file cannot be used."""
    broker = f"{cfg.host}:{cfg.port}"
    v5 = cfg.protocol == "5"
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{client_id}-selftest",
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
        reconnect_on_failure=False,
    )
    apply_credentials(c, cfg)
    done = threading.Event()
    answer: list[tuple[ReasonCode, bool]] = []  # (reason, from a CONNACK)

    def on_connect(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        answer.append((reason, True))
        done.set()

    def on_disconnect(_c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        answer.append((reason, False))
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    try:
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
            c.connect(cfg.host, cfg.port, cfg.keepalive_s, clean_start=True, properties=props)
        else:
            c.connect(cfg.host, cfg.port, cfg.keepalive_s)
    except ssl.SSLError as e:  # a TLS setup fault, not a network one
        raise PublishError(describe_connect_error(e, broker)) from e
    except OSError as e:
        raise BrokerUnreachableError(describe_connect_error(e, broker)) from e
    except ValueError as e:
        raise PublishError(f"cannot connect to {broker}: {e}") from e
    c.loop_start()
    try:
        if not done.wait(timeout_s):
            raise PublishError(f"broker {broker} sent no CONNACK within {timeout_s:g} s")
        reason, connack = answer[0]
        if not connack:
            raise PublishError(
                f"broker {broker} closed the connection during connect: {reason.getName()}"
            )
        if reason.is_failure:
            raise PublishError(
                f"broker {broker} refused the login: {reason.getName()} "
                f"(reason code 0x{int(reason.value):02x})"
                + (f" as user {cfg.username!r}" if cfg.username else "")
            )
    finally:
        c.disconnect()
        c.loop_stop()
    tls = ", TLS" if cfg.tls.enabled else ""
    who = f" as {cfg.username!r}" if cfg.username else ""
    return f"{broker} accepts the login{who} (MQTT {cfg.protocol}{tls})"
