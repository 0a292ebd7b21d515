"""The naive baseline: read a window, `session.run`, `paho.publish` at QoS 1. No agent.

    python scripts/peers/naive.py MODEL.onnx PORT N BATCH

Reads windows of the demo signal (pre-rendered, as if read from a sensor buffer),
runs them through ONNX Runtime (one thread) and publishes each window's score at
QoS 1 to the broker on 127.0.0.1:PORT. Prints JSON: per-window latency (read + run +
publish call), and windows/s over the whole run until every PUBACK arrived.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal


def main() -> None:
    model, port, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    samples = SyntheticSignal(SignalSpec(seed=1)).render(0, n * 16 + 64)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="naive")
    c.max_inflight_messages_set(20)
    c.connect("127.0.0.1", port)
    c.loop_start()
    lat = []
    infos = []
    t_all = time.perf_counter()
    for i in range(0, n, batch):
        t = time.perf_counter()
        x = np.stack([samples[(i + k) * 16 : (i + k) * 16 + 64] for k in range(batch)])
        x = ((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)
        y = sess.run(None, {inp: x})[0]
        scores = ((x - y) ** 2).reshape(batch, -1).mean(axis=1)
        for s in scores:
            infos.append(c.publish("naive/score", json.dumps({"score": float(s)}), qos=1))
        lat.append((time.perf_counter() - t) / 1.0)
    for info in infos:
        info.wait_for_publish(30)
    total = time.perf_counter() - t_all
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"latency_s": lat, "windows": n, "windows_per_s": n / total}))


if __name__ == "__main__":
    main()
