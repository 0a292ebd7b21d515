"""Building models from data: dense ONNX graphs, int8 quantisation, and the model
families `edge-agent model new` fits to a user's normal data (build time only; the
agent's run path never imports this package).

Needs the `onnx` package (extra `model`), imported only when a graph is written.
"""
