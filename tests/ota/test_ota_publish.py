"""`edge-ota publish` against a real mosquitto: the retained announcement reaches a late
subscriber, carries a manifest the device can verify before downloading, and `--serve`
serves the bundle the device then fetches, verifies and unpacks."""

from __future__ import annotations

import queue
import subprocess
import sys

import paho.mqtt.client as mqtt
import pytest
from conftest import NOW, PROFILE, Env
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.errors import PublishError
from ota.announce import Announcement, device_topic, fleet_topic
from ota.fetch import fetcher_for
from ota.publish import MqttTarget, publish_retained
from ota.unpack import unpack
from ota.verify import verify
from tests.mosquitto import Broker, free_port

pytestmark = pytest.mark.broker


def receive_retained(port: int, topic: str, timeout: float = 10) -> bytes:
    got: queue.Queue[bytes] = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
    c.on_message = lambda _c, _u, msg: got.put(msg.payload) if msg.retain else None
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        return got.get(timeout=timeout)
    finally:
        c.disconnect()
        c.loop_stop()


def test_publish_serve_then_device_fetches_verifies_unpacks(env: Env, broker: Broker) -> None:
    bundle = env.bundle("vib-ae-2.bundle")
    port = broker.port
    proc = subprocess.Popen(
        [sys.executable, "-m", "ota", "publish", str(bundle), "--host", "127.0.0.1",
         "--port", str(port), "--group", "line-3", "--device", "gw-01",
         "--serve", "0", "--serve-for", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[-1].startswith("serving"), (lines, proc.stderr and proc.stderr.read())
        for topic in (fleet_topic("line-3"), device_topic("gw-01")):
            ann = Announcement.from_payload(receive_retained(port, topic))
            assert ann.url.startswith("http://127.0.0.1:")
        assert topic == "edge/gw-01/ota/announce"
        # Device side: refuse or accept before downloading, then fetch within the size.
        vm = verify(ann.manifest_bytes, ann.signatures, env.root, 1, PROFILE, NOW)
        dest = fetcher_for(ann.url).fetch(ann.url, env.tmp / "dl" / "b.bundle", ann.size)
        unpack(dest, vm, env.tmp / "slots" / "b")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert (env.tmp / "slots" / "b" / "model.onnx").read_bytes() == (
        env.model_dir / "model.onnx"
    ).read_bytes()


def test_publish_to_unreachable_broker_is_publish_error(env: Env) -> None:
    with pytest.raises(PublishError):
        publish_retained(MqttTarget("127.0.0.1", free_port()), [("edge/x", b"{}")], timeout_s=2)
