"""The inference endpoint measured as clients see it: a real `edge-agent run` process.

    python scripts/bench_serving.py [--n 500] [--secs 5] [--clients 4] [--json FILE]
                                    [--mlserver]

Latency: sequential batch-1 infer requests over one keep-alive connection (p50/p99, ms).
Throughput at saturation: CLIENTS threads sending batch-1 (and batch-64) requests for
SECS seconds (windows/s). JSON tensors for both servers; the agent again with the binary
tensor data extension (tritonclient's default), which skips JSON's per-number parsing.
Swap-in: the first request to a model not loaded (the pool loads it on demand)
against the same request warm. The endpoint's own limits are raised for the run
(rate_per_s, max_inflight = clients) so the figures are the endpoint's, not its
throttles'. Model: vibration-ae-fp32-onnx (bench_peers.py's).

--mlserver: the same client and load against MLServer serving the same ONNX file
(bench_peers.py's throw-away venv and custom runtime; skipped with the reason when the
venv cannot be made). MLServer gets the normalised windows (its model's own input);
the agent gets raw windows and normalises them, as a client would send.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402

from edge_agent.measure.benchstats import LatencySummary  # noqa: E402
from edge_agent.runtime.model import load_model  # noqa: E402
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal  # noqa: E402
from tests.serving_agent import free_port  # noqa: E402

MODEL = "vibration-ae-fp32-onnx"
TOKEN = "bench-serving-token-0123456789"

Body = tuple[bytes, dict[str, str]]  # the request body and its own headers
Post = Callable[[http.client.HTTPConnection, Body], None]


def _windows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw, normalised) windows of the synthetic signal, (n, 64, 4)."""
    m = load_model(ROOT / "models" / MODEL, validate=False)
    pre = m.card.preprocessing
    s = SyntheticSignal(SignalSpec(seed=2)).render(0, n * pre.hop + pre.window)
    raw = np.stack([s[i * pre.hop : i * pre.hop + pre.window] for i in range(n)])
    return raw.astype(np.float32), m.normalize(raw.astype(np.float32))


def _body(x: np.ndarray) -> Body:
    inp = {"name": "window", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [inp]}).encode(), {}


def _binary_body(x: np.ndarray) -> Body:
    """The binary tensor data extension (what tritonclient sends by default)."""
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    inp: dict[str, Any] = {"name": "window", "shape": list(x.shape), "datatype": "FP32"}
    inp["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [inp], "parameters": {"binary_data_output": True}}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def poster(path: str, headers: dict[str, str]) -> Post:
    def post(c: http.client.HTTPConnection, body: Body) -> None:
        hdrs = {"Content-Type": "application/json", **headers, **body[1]}
        c.request("POST", path, body[0], hdrs)
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")

    return post


def latency(
    port: int, post: Post, xs: np.ndarray, n: int, make: Callable[[np.ndarray], Body] = _body
) -> LatencySummary:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bodies = [make(xs[i % len(xs)][None]) for i in range(n)]
    for b in bodies[:20]:  # warm-up
        post(c, b)
    lat = []
    for b in bodies:
        t = time.perf_counter()
        post(c, b)
        lat.append((time.perf_counter() - t) * 1e3)
    c.close()
    return LatencySummary.of(lat)


def throughput(
    port: int,
    post: Post,
    xs: np.ndarray,
    batch: int,
    *,
    secs: float,
    clients: int,
    make: Callable[[np.ndarray], Body] = _body,
) -> float:
    bodies = [make(xs[i : i + batch]) for i in range(0, 8 * batch, batch)]
    counts = [0] * clients
    stop = time.perf_counter() + secs

    def worker(k: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = 0
        while time.perf_counter() < stop:
            post(c, bodies[i % len(bodies)])
            i += 1
        counts[k] = i
        c.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) * batch / (time.perf_counter() - t0)


def start_agent(work: Path, clients: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (work / "token").write_text(TOKEN)
    cfg = work / "agent.toml"
    cfg.write_text(
        f"""
device_id = "gw-bench"
models_dir = "{ROOT / "models"}"
[mqtt]
enabled = false
[logging]
format = "plain"
[serving]
enabled = true
port = {port}
token_file = "{work / "token"}"
rate_per_s = 1000000
max_inflight = {clients}
max_connections = {clients + 4}
deadline_ms = 1000
"""
    )
    log = (work / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg),
         "--state-dir", str(work / "state")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v2/health/ready")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("agent not ready: " + (work / "agent.log").read_text()[-800:])


def measure(
    port: int,
    post: Post,
    xs: np.ndarray,
    args: argparse.Namespace,
    make: Callable[[np.ndarray], Body] = _body,
) -> dict[str, Any]:
    def tput(batch: int) -> float:
        return throughput(port, post, xs, batch, secs=args.secs, clients=args.clients, make=make)

    return {
        "latency_ms_batch1": latency(port, post, xs, args.n, make).__dict__,
        "windows_per_s_batch1": tput(1),
        "windows_per_s_batch64": tput(64),
    }


def swap_in(port: int) -> dict[str, float]:
    """First request to a model not loaded (loaded on demand) vs the same one warm."""
    from edge_agent.runtime.model import find_models

    card = next(c for c in find_models(ROOT / "models") if c.name == "skab-ae-fp32-onnx")
    body = _body(card.golden.inputs[:1])
    post = poster(f"/v2/models/{card.name}/infer", {"Authorization": f"Bearer {TOKEN}"})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t = time.perf_counter()
    post(c, body)
    cold = (time.perf_counter() - t) * 1e3
    warm = []
    for _ in range(20):
        t = time.perf_counter()
        post(c, body)
        warm.append((time.perf_counter() - t) * 1e3)
    c.close()
    return {"cold_ms": cold, "warm_p50_ms": float(np.median(warm))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--secs", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--json", type=Path)
    p.add_argument("--mlserver", action="store_true")
    args = p.parse_args()
    raw, norm = _windows(1024)
    out: dict[str, Any] = {"model": MODEL, "clients": args.clients, "secs": args.secs}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as d:
        work = Path(d)
        proc, port = start_agent(work, args.clients)
        try:
            out["swap_in"] = swap_in(port)
            post = poster(f"/v2/models/{MODEL}/infer", {"Authorization": f"Bearer {TOKEN}"})
            out["agent"] = measure(port, post, raw, args)
            out["agent_binary_tensors"] = measure(port, post, raw, args, _binary_body)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if args.mlserver:
            out["mlserver"] = _mlserver(work, norm, args)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _mlserver(work: Path, xs: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    import bench_peers

    py, why = bench_peers.ensure_venv("mlserver")
    if py is None:
        return {"available": False, "reason": why}
    peer = bench_peers.Peer("mlserver", py, ROOT / "models" / MODEL / "model.onnx", work)
    try:
        spec = peer.start()
        return measure(peer.port, poster(spec.path, {}), xs, args)
    except RuntimeError as e:
        return {"available": False, "reason": str(e)[:300]}
    finally:
        peer.stop()


if __name__ == "__main__":
    raise SystemExit(main())
