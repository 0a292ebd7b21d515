"""Publishing announcements over MQTT (paho-mqtt 2.x): retained, QoS 1, then disconnect.

The broker options are the agent's own (`[mqtt]`: user name, password from a file, TLS
with a CA file, client certificate and key for mTLS, `insecure` for lab brokers only),
applied by the agent's code (`edge_agent.reporting.link.apply_credentials`), so what
reaches a broker from a device reaches it from `edge-ota` too.
paho's errors and OSError are translated into PublishError where they enter.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import PublishError
from ota.broker_args import MqttTarget

__all__ = ["DEFAULT_PUBLISH_TIMEOUT_S", "MqttTarget", "publish_retained"]

log = logging.getLogger(__name__)
DEFAULT_PUBLISH_TIMEOUT_S = 10.0


def _client(target: MqttTarget) -> mqtt.Client:
    """A paho client with the target's credentials and TLS, set up as the agent does.
    ConfigError when a file they name cannot be used."""
    from edge_agent.reporting.link import apply_credentials

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=target.client_id)
    apply_credentials(client, target.mqtt_config())
    if target.password is not None:
        client.username_pw_set(target.username, target.password)
    return client


def _connect_error(e: OSError, target: MqttTarget) -> PublishError:
    from edge_agent.reporting.link import describe_connect_error

    where = f"{target.host}:{target.port}"
    if isinstance(e, ssl.SSLError):
        return PublishError(f"cannot connect to MQTT broker {describe_connect_error(e, where)}")
    return PublishError(f"cannot connect to MQTT broker {where}: {e}")


def publish_retained(
    target: MqttTarget,
    messages: Sequence[tuple[str, bytes]],
    timeout_s: float = DEFAULT_PUBLISH_TIMEOUT_S,
) -> None:
    """Publish each (topic, payload) retained with QoS 1; return once all are acknowledged."""
    connected = threading.Event()
    result: list[ReasonCode] = []

    def on_connect(
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: object,
    ) -> None:
        result.append(reason)
        connected.set()

    def on_disconnect(client: mqtt.Client, userdata: object, *rest: object) -> None:
        connected.set()  # closed before any CONNACK: say so now, not after the timeout

    client = _client(target)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(target.host, target.port, keepalive=30)
    except OSError as e:
        raise _connect_error(e, target) from e
    except ValueError as e:
        raise PublishError(f"cannot connect to MQTT broker {target.host}:{target.port}: {e}") from e
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise PublishError(f"no CONNACK from {target.host}:{target.port} in {timeout_s}s")
        if not result:
            tls = " (TLS: does it want a client certificate, --cert-file/--key-file?)"
            raise PublishError(
                f"cannot connect to MQTT broker {target.host}:{target.port}: it closed the "
                f"connection before accepting it{tls if target.tls_on else ''}"
            )
        if result[0].is_failure:
            raise PublishError(f"broker {target.host}:{target.port} refused: {result[0]}")
        infos = [client.publish(topic, payload, qos=1, retain=True) for topic, payload in messages]
        for (topic, _), info in zip(messages, infos, strict=True):
            info.wait_for_publish(timeout_s)
            if not info.is_published():
                raise PublishError(f"{topic}: not acknowledged by the broker in {timeout_s}s")
            log.info("published retained announcement on %s", topic)
    except (RuntimeError, ValueError) as e:
        raise PublishError(f"MQTT publish failed: {e}") from e
    finally:
        client.disconnect()
        client.loop_stop()
