"""MLServer peer: a custom runtime serving an ONNX model (V2 inference protocol).

mlserver-onnx is not on the package index this machine reaches, so the runtime is
the few lines MLServer's docs describe for custom runtimes. Runs only inside the
throw-away venv made by scripts/bench_peers.py; not part of the project.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        uri = self.settings.parameters.uri
        self.sess = ort.InferenceSession(uri, opts, providers=["CPUExecutionProvider"])
        self.inp = self.sess.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        y = self.sess.run(None, {self.inp: x})[0]
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("reconstruction", y)]
        )
