"""MQTT sensor messages: each sample keeps its message's time, and a jump in those
times (or messages the source had to drop) is a hole windows never span."""

from __future__ import annotations

import json
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_agent.sources.base import Block
from edge_agent.sources.mqtt_source import MqttSource, Options
from edge_agent.sources.runner import SourceRunner, SourceState
from tests.mosquitto import Broker

CH = ("temp", "pressure")
TOPIC = "plant/line2/oven/sensors"

pytestmark = pytest.mark.broker


def test_sample_times_are_the_messages_and_a_time_jump_is_a_hole(broker: Broker) -> None:
    opts = Options(
        topic=TOPIC, channels=CH, host=broker.host, port=broker.port, qos=1, rate_hz=10.0
    )
    r = SourceRunner(MqttSource("oven", opts), backoff_min_s=0.05, backoff_max_s=0.2)
    r.start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="oven-bridge")
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        deadline = time.monotonic() + 30
        while r.state is not SourceState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.state is SourceState.RUNNING
        sent = [1_700_000_000.0 + i / 10 for i in range(20)]
        sent += [1_700_000_060.0 + i / 10 for i in range(20)]  # a minute missing
        for i, t in enumerate(sent):
            msg = json.dumps({"t": t, "values": [20.0 + i, 1.0]}).encode()
            pub.publish(TOPIC, msg, qos=1).wait_for_publish(5)
        blocks: list[Block] = []
        deadline = time.monotonic() + 30
        while sum(len(b.samples) for b in blocks) < len(sent) and time.monotonic() < deadline:
            blocks += r.get(0.1)
    finally:
        pub.loop_stop()
        pub.disconnect()
        r.stop()
    times = np.concatenate([b.times for b in blocks if b.times is not None])
    np.testing.assert_allclose(times, sent, rtol=0, atol=1e-6)
    holes = [b for b in blocks if b.gap_before]
    assert len(holes) == 1
    assert holes[0].t0 == pytest.approx(1_700_000_060.0)
    assert r.source.snapshot_counters()["time_gaps"] == 1
