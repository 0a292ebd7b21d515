"""The local Open Inference Protocol (KServe V2) endpoint (docs/serving.md).

`protocol` (pure: requests and responses as the protocol spells them), `limits` (pure:
the rate limit), `models` (names -> pooled models, scored on the shared scheduler) and
`http` (the server, a supervised component). Imported only when `[serving] enabled`.
"""
