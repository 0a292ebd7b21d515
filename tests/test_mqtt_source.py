"""The MQTT sensor source against a real mosquitto on a free loopback port."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_agent.sources.framing import encode_frame
from edge_agent.sources.mqtt_payload import decode_json
from edge_agent.sources.mqtt_source import MqttSource, Options
from edge_agent.sources.runner import SourceRunner, SourceState
from tests.mosquitto import Broker

CH = ("temp", "pressure")
TOPIC = "plant/line1/press/sensors"

pytestmark = pytest.mark.broker


def _publisher(b: Broker) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc-bridge")
    c.connect(b.host, b.port)
    c.loop_start()
    return c


def _runner(b: Broker, fmt: str = "json") -> SourceRunner:
    opts = Options(topic=TOPIC, channels=CH, format=fmt, host=b.host, port=b.port, qos=1)  # type: ignore[arg-type]
    return SourceRunner(MqttSource("press", opts), backoff_min_s=0.05, backoff_max_s=0.2)


def _wait(pred: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    assert pred(), "condition not reached in time"  # type: ignore[operator]


def _collect(r: SourceRunner, n: int, timeout: float = 5.0) -> np.ndarray:
    got: list[np.ndarray] = []
    deadline = time.monotonic() + timeout
    while sum(len(g) for g in got) < n and time.monotonic() < deadline:
        got.extend(b.samples for b in r.get(0.1))
    return np.concatenate(got) if got else np.empty((0, len(CH)), np.float32)


def test_json_messages_and_malformed_ones(broker: Broker) -> None:
    r = _runner(broker)
    r.start()
    pub = _publisher(broker)
    try:
        _wait(lambda: r.state is SourceState.RUNNING)
        msgs: list[bytes] = [
            json.dumps({"t": 1000.0, "values": [20.5, 1.01]}).encode(),
            b"{not json",
            json.dumps({"values": [[21.0, 1.02], [21.5, 1.03]]}).encode(),
            json.dumps({"values": [1, 2, 3]}).encode(),  # wrong channel count
            json.dumps({"temp": 22.0, "pressure": None, "extra": 1}).encode(),
            b"\xff\xfe binary noise",
        ]
        for m in msgs:
            pub.publish(TOPIC, m, qos=1).wait_for_publish(2)
        got = _collect(r, 4)
        assert got.shape == (4, 2)
        np.testing.assert_allclose(got[:3], [[20.5, 1.01], [21.0, 1.02], [21.5, 1.03]], rtol=1e-6)
        assert got[3, 0] == 22.0
        assert math.isnan(got[3, 1])
        # the last message (noise) may still be in flight after the samples arrived
        _wait(lambda: r.source.snapshot_counters().get("bad_messages", 0) >= 3)
        c = r.source.snapshot_counters()
        assert c["bad_messages"] == 3
        assert c["bad_values"] == 1
        assert c["unknown_keys"] == 1
        assert c["messages"] == 3  # messages that carried samples
    finally:
        pub.disconnect()
        pub.loop_stop()
        r.stop()


def test_packed_binary_frames(broker: Broker) -> None:
    r = _runner(broker, fmt="binary")
    r.start()
    pub = _publisher(broker)
    try:
        _wait(lambda: r.state is SourceState.RUNNING)
        data = np.arange(20.0).reshape(10, 2)
        pub.publish(TOPIC, encode_frame(data[:5], frame_seq=0), qos=1).wait_for_publish(2)
        bad = bytearray(encode_frame(data[:5], frame_seq=1))
        bad[-2] ^= 1
        pub.publish(TOPIC, bytes(bad), qos=1).wait_for_publish(2)
        pub.publish(TOPIC, encode_frame(data[5:], frame_seq=2), qos=1).wait_for_publish(2)
        got = _collect(r, 10)
        np.testing.assert_array_equal(got, data.astype(np.float32))
        c = r.source.snapshot_counters()
        assert c["crc_errors"] == 1
        assert c["bad_messages"] == 1
    finally:
        pub.disconnect()
        pub.loop_stop()
        r.stop()


def test_broker_restart_reconnects(broker: Broker) -> None:
    r = _runner(broker)
    r.start()
    try:
        _wait(lambda: r.state is SourceState.RUNNING)
        broker.stop()
        _wait(lambda: r.state is SourceState.RECONNECTING)
        broker.start()
        _wait(lambda: r.state is SourceState.RUNNING)
        pub = _publisher(broker)
        try:
            # retry until the re-subscription is in place on the new broker
            deadline = time.monotonic() + 5
            got = np.empty((0, 2))
            while not len(got) and time.monotonic() < deadline:
                pub.publish(TOPIC, b'{"values": [1.0, 2.0]}', qos=1).wait_for_publish(2)
                got = _collect(r, 1, timeout=0.3)
            assert got[0].tolist() == [1.0, 2.0]
        finally:
            pub.disconnect()
            pub.loop_stop()
        assert r.disconnects >= 1
    finally:
        r.stop()


def test_decode_json_shapes_without_broker() -> None:
    d = decode_json(b'{"t": 5, "values": [[1, 2], [3, 4]]}', CH)
    assert d.t == 5.0
    assert d.samples.tolist() == [[1, 2], [3, 4]]
    assert decode_json(b"[1, 2]", CH).errors == {"bad_messages": 1}
    assert decode_json(b'{"other": 1}', CH).errors == {"bad_messages": 1}
    d = decode_json(b'{"temp": true}', CH)
    assert d.errors == {"bad_values": 1, "missing_values": 1}
