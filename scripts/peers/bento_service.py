"""BentoML peer: serves the ONNX model given by $BENCH_MODEL over HTTP (POST /infer).

Runs only inside the throw-away venv made by scripts/bench_peers.py; not part of the
project. One worker, one ONNX Runtime thread: the same runtime settings as the agent's
in-process path and the naive script, so the serving framework is the difference.
"""

import os

import bentoml
import numpy as np
import onnxruntime as ort

MODEL = os.environ["BENCH_MODEL"]


@bentoml.service(workers=1)
class Scorer:
    def __init__(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
        self.inp = self.sess.get_inputs()[0].name

    @bentoml.api
    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.inp: x.astype(np.float32)})[0]
