"""Publishing announcements over MQTT (paho-mqtt 2.x): retained, QoS 1, then disconnect.

paho's errors and OSError are translated into PublishError where they enter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import PublishError

__all__ = ["DEFAULT_PUBLISH_TIMEOUT_S", "MqttTarget", "publish_retained"]

log = logging.getLogger(__name__)
DEFAULT_PUBLISH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    client_id: str = ""


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

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=target.client_id)
    client.on_connect = on_connect
    if target.username is not None:
        client.username_pw_set(target.username, target.password)
    try:
        client.connect(target.host, target.port, keepalive=30)
    except (OSError, ValueError) as e:
        raise PublishError(f"cannot connect to MQTT broker {target.host}:{target.port}: {e}") from e
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise PublishError(f"no CONNACK from {target.host}:{target.port} in {timeout_s}s")
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
