"""The inference endpoint measured as clients see it: a real `edge-agent run` process.

    python scripts/bench_serving.py [--n 500] [--secs 5] [--clients 4] [--json FILE]
                                    [--mlserver] [--rounds R] [--client lean|stdlib]
                                    [--baseline-root DIR]

Latency: sequential batch-1 infer requests over one keep-alive connection (p50/p99, ms).
Client (--client, the same for every server): `lean` (default) sends each request,
encoded once, with one sendall and reads a Content-Length answer; `stdlib` is
http.client, which adds ~80 us a request of its own.
Throughput at saturation: CLIENTS threads sending batch-1 (and batch-64) requests for
SECS seconds (windows/s). JSON tensors for both servers; the agent again with the binary
tensor data extension (tritonclient's default), which skips JSON's per-number parsing.
Swap-in: the first request to a model not loaded (the pool loads it on demand)
against the same request warm. The endpoint's own limits are raised for the run
(rate_per_s, max_inflight = clients) so the figures are the endpoint's, not its
throttles'. Model: vibration-ae-fp32-onnx (bench_peers.py's).

--mlserver: the same client and load against MLServer serving the same ONNX file
(bench_peers.py's throw-away venv and custom runtime; skipped with the reason when the
venv cannot be made). Both servers run at once and take turns, R rounds of each
(figures: the median over rounds), so that the machine's other load falls on both;
each round starts with the next server in turn, each turn after a 1 s pause, and
each server first gets 300 unrecorded requests.
MLServer gets the normalised windows (its model's own input); the agent gets raw
windows and normalises them, as a client would send.

--baseline-root DIR: a second agent run from the code in DIR (e.g. `git archive
<commit> | tar -x -C DIR`), same model and config, measured with JSON tensors as
"baseline" in the same rounds: a change side by side with what it changes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402

from edge_agent.measure.benchstats import LatencySummary  # noqa: E402
from edge_agent.runtime.model import load_model  # noqa: E402
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal  # noqa: E402
from tests.serving_agent import free_port  # noqa: E402

MODEL = "vibration-ae-fp32-onnx"
SETTLE_S = 1.0  # a pause before each server's turn
WARMUP = 300  # requests to each server before the measured rounds
INTERLEAVE_CHUNK = 25  # --interleave: requests to one server before the next one's turn
TOKEN = "bench-serving-token-0123456789"

Body = tuple[bytes, dict[str, str]]  # the request body and its own headers
Post = Callable[[Body], bytes]  # a body -> the whole request (head and body)


class Server(NamedTuple):
    """One server as measured: its port, request encoder, windows and body encoder."""

    port: int
    post: Post
    xs: np.ndarray
    make: Callable[[np.ndarray], Body]


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


class LeanConnection:
    """A keep-alive HTTP/1.1 client that adds little of its own: each request is
    encoded once (head and body in one buffer), sent with one sendall, and answered by
    a status line and a Content-Length body. http.client's per-request header building
    and email-parser response headers cost ~80 us a request here, as much as a lean
    server's whole answer; both servers get this same client."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while (i := self.buf.find(b"\r\n\r\n")) < 0:
            self.buf += self._recv()
        head, self.buf = self.buf[:i], self.buf[i + 4 :]
        status = int(head[9:12])
        at = head.lower().find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
        n = int(head[at + 17 :].split(b"\r\n", 1)[0])
        while len(self.buf) < n:
            self.buf += self._recv()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, body

    def _recv(self) -> bytes:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise RuntimeError("server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


class StdlibConnection:
    """http.client, for --client stdlib (what a plain urllib user pays)."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        head, _, body = request.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _, path, _ = lines[0].split(" ")
        hdrs = dict(ln.split(": ", 1) for ln in lines[1:])
        hdrs.pop("Host", None)
        hdrs.pop("Content-Length", None)
        self.c.request("POST", path, body, hdrs)
        r = self.c.getresponse()
        return r.status, r.read()

    def close(self) -> None:
        self.c.close()


Connection = LeanConnection | StdlibConnection
CLIENTS: dict[str, Callable[[int], Connection]] = {
    "lean": LeanConnection,
    "stdlib": StdlibConnection,
}


def poster(path: str, headers: dict[str, str]) -> Post:
    """A request encoder: Body -> the whole request, encoded once before timing."""

    def encode(body: Body) -> bytes:
        hdrs = {"Host": "127.0.0.1", "Content-Type": "application/json", **headers, **body[1]}
        hdrs["Content-Length"] = str(len(body[0]))
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        return head.encode("latin-1") + b"\r\n" + body[0]

    return encode


def _post(c: Connection, request: bytes) -> None:
    status, data = c.exchange(request)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data[:200]!r}")


def latency(
    port: int,
    post: Post,
    xs: np.ndarray,
    n: int,
    *,
    make: Callable[[np.ndarray], Body] = _body,
    client: str = "lean",
) -> LatencySummary:
    c = CLIENTS[client](port)
    reqs = _batch1_requests(post, xs, n, make)
    for r in reqs[:20]:  # warm-up
        _post(c, r)
    lat: list[float] = []
    _timed(c, reqs, lat)
    c.close()
    return LatencySummary.of(lat)


def _batch1_requests(
    post: Post, xs: np.ndarray, n: int, make: Callable[[np.ndarray], Body]
) -> list[bytes]:
    """`n` batch-1 requests, one window each (the windows in turn), encoded before timing."""
    return [post(make(xs[i % len(xs)][None])) for i in range(n)]


def _timed(c: Connection, reqs: list[bytes], into: list[float]) -> None:
    """Each request's round trip on `c`, in ms, appended to `into`."""
    for r in reqs:
        t = time.perf_counter()
        _post(c, r)
        into.append((time.perf_counter() - t) * 1e3)


def interleaved_latency(
    servers: dict[str, Server], n: int, chunk: int, client: str
) -> dict[str, dict[str, float]]:
    """Batch-1 latency of every server in `servers`, each on its own keep-alive
    connection, the servers taking turns every `chunk` requests until each has answered
    `n`. The host slows this VM for seconds at a time (every request ~1.5-1.8x as long);
    servers measured seconds apart then land in different stretches, and their p50s'
    ratio moves 0.16-0.34 between runs with neither server changed. Taking turns every
    few milliseconds, every server sees the same stretches."""
    conns = {k: CLIENTS[client](s.port) for k, s in servers.items()}
    reqs = {k: _batch1_requests(s.post, s.xs, n, s.make) for k, s in servers.items()}
    for k, c in conns.items():  # warm-up
        for r in reqs[k][:20]:
            _post(c, r)
    lat: dict[str, list[float]] = {k: [] for k in servers}
    names = list(servers)
    for turn, start in enumerate(range(0, n, chunk)):
        for k in names[turn % len(names) :] + names[: turn % len(names)]:
            _timed(conns[k], reqs[k][start : start + chunk], lat[k])
    for c in conns.values():
        c.close()
    return {k: LatencySummary.of(v).__dict__ for k, v in lat.items()}


def throughput(
    port: int,
    post: Post,
    xs: np.ndarray,
    batch: int,
    *,
    secs: float,
    clients: int,
    make: Callable[[np.ndarray], Body] = _body,
    client: str = "lean",
) -> float:
    reqs = [post(make(xs[i : i + batch])) for i in range(0, 8 * batch, batch)]
    counts = [0] * clients
    stop = time.perf_counter() + secs

    def worker(k: int) -> None:
        c = CLIENTS[client](port)
        i = 0
        while time.perf_counter() < stop:
            _post(c, reqs[i % len(reqs)])
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


def start_agent(work: Path, clients: int, code: Path = ROOT) -> tuple[subprocess.Popen[bytes], int]:
    """An `edge-agent run` of the code in `code` (this tree's by default), in `work`."""
    work.mkdir(parents=True, exist_ok=True)
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env["PYTHONPATH"] = str(code)  # `-m edge_agent` from `code`, not the installed tree
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg),
         "--state-dir", str(work / "state")],
        cwd=code, stdout=log, stderr=subprocess.STDOUT, env=env,
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
        return throughput(
            port, post, xs, batch, secs=args.secs, clients=args.clients, make=make,
            client=args.client,
        )  # fmt: skip

    lat = latency(port, post, xs, args.n, make=make, client=args.client)
    return {
        "latency_ms_batch1": lat.__dict__,
        "windows_per_s_batch1": tput(1),
        "windows_per_s_batch64": tput(64),
    }


def swap_in(port: int, client: str) -> dict[str, float]:
    """First request to a model not loaded (loaded on demand) vs the same one warm."""
    from edge_agent.runtime.model import find_models

    card = next(c for c in find_models(ROOT / "models") if c.name == "skab-ae-fp32-onnx")
    post = poster(f"/v2/models/{card.name}/infer", {"Authorization": f"Bearer {TOKEN}"})
    req = post(_body(card.golden.inputs[:1]))
    c = CLIENTS[client](port)
    t = time.perf_counter()
    _post(c, req)
    cold = (time.perf_counter() - t) * 1e3
    warm = []
    for _ in range(20):
        t = time.perf_counter()
        _post(c, req)
        warm.append((time.perf_counter() - t) * 1e3)
    c.close()
    return {"cold_ms": cold, "warm_p50_ms": float(np.median(warm))}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--secs", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1, help="measure each server this often")
    p.add_argument("--json", type=Path)
    p.add_argument("--mlserver", action="store_true")
    p.add_argument(
        "--client", choices=sorted(CLIENTS), default="lean", help="the same for both servers"
    )
    p.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="N",
        help="after the rounds, batch-1 latency again with the servers taking turns every "
        f"{INTERLEAVE_CHUNK} requests until each has answered N (JSON tensors)",
    )
    p.add_argument(
        "--baseline-root",
        type=Path,
        help="also measure an agent run from the code in this directory (JSON tensors)",
    )
    return p.parse_args()


def main() -> int:
    args = _args()
    raw, norm = _windows(1024)
    out: dict[str, Any] = {
        "model": MODEL,
        "clients": args.clients,
        "secs": args.secs,
        "client": args.client,
        "rounds": args.rounds,
        # the machine's other load changes every figure here (a loaded VM's CPUs never
        # go idle, so its thread wake-ups are cheaper): recorded with the run
        "loadavg_start": list(os.getloadavg()),
    }
    if args.baseline_root:
        out["baseline_root"] = str(args.baseline_root)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as d, contextlib.ExitStack() as up:
        work = Path(d)
        proc, port = start_agent(work, args.clients)
        up.callback(_stop, proc)
        out["swap_in"] = swap_in(port, args.client)
        post = poster(f"/v2/models/{MODEL}/infer", {"Authorization": f"Bearer {TOKEN}"})
        # every server measured, in the order of the rounds' turns
        servers: dict[str, Server] = {
            "agent": Server(port, post, raw, _body),
            "agent_binary_tensors": Server(port, post, raw, _binary_body),
        }
        if args.baseline_root:
            bproc, bport = start_agent(work / "baseline", args.clients, args.baseline_root)
            up.callback(_stop, bproc)
            servers["baseline"] = Server(bport, post, raw, _body)
        if args.mlserver:
            started = _mlserver(work)
            if isinstance(started, str):
                out["mlserver"] = {"available": False, "reason": started}
            else:
                peer, path = started
                up.callback(peer.stop)
                servers["mlserver"] = Server(peer.port, poster(path, {}), norm, _body)
        runs: dict[str, Callable[[], dict[str, Any]]] = {
            k: functools.partial(measure, s.port, s.post, s.xs, args, s.make)
            for k, s in servers.items()
        }
        warmups: dict[str, Callable[[], object]] = {
            k: functools.partial(
                latency, s.port, s.post, s.xs, WARMUP, make=s.make, client=args.client
            )
            for k, s in servers.items()
        }
        # the servers take turns, round after round: the machine's other load then
        # falls on all of them alike, and the ratios are taken between neighbours. Each
        # round starts with the next one, and each run after a pause: the one measured
        # first no longer always follows the same one's saturation runs (their
        # aftermath: freed memory, a busy event loop, other jobs' catch-up)
        got: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}
        names = list(runs)
        # not recorded: each server past its start (MLServer's goes on in the background
        # a while) and its first requests' costs
        for name in names:
            warmups[name]()
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                time.sleep(SETTLE_S)
                got[name].append(runs[name]())
        for name, rs in got.items():
            out[name] = _median(rs)
            if args.rounds > 1:
                out[name]["rounds"] = rs
        if args.interleave:
            # JSON tensors, as the rounds' figures compared with MLServer
            out["interleaved"] = _interleaved(
                args, {k: s for k, s in servers.items() if s.make is _body}
            )
    out["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _interleaved(args: argparse.Namespace, servers: dict[str, Server]) -> dict[str, Any]:
    got: dict[str, Any] = {
        "n": args.interleave,
        "chunk": INTERLEAVE_CHUNK,
        "latency_ms_batch1": interleaved_latency(
            servers, args.interleave, INTERLEAVE_CHUNK, args.client
        ),
    }
    lat = got["latency_ms_batch1"]
    if "mlserver" in lat:
        got["p50_over_mlserver"] = {
            k: lat[k]["p50"] / lat["mlserver"]["p50"] for k in lat if k != "mlserver"
        }
    print(
        "interleaved batch-1 p50 ms: "
        + ", ".join(f"{k} {v['p50']:.3f} (p99 {v['p99']:.3f})" for k, v in lat.items())
        + "".join(f"; {k} / mlserver {r:.2f}" for k, r in got.get("p50_over_mlserver", {}).items()),
        file=sys.stderr,
        flush=True,
    )
    return got


def _median(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (latency: of each round's p50, p99, ...)."""
    lat = {k: float(np.median([r["latency_ms_batch1"][k] for r in rs])) for k in PCTS}
    out: dict[str, Any] = {"latency_ms_batch1": lat}
    for k in ("windows_per_s_batch1", "windows_per_s_batch64"):
        out[k] = float(np.median([r[k] for r in rs]))
    return out


PCTS = ("n", "p50", "p99", "mean", "max")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def _mlserver(work: Path) -> tuple[Any, str] | str:
    """(a started bench_peers.Peer serving the ONNX file, its infer path), or why not."""
    import bench_peers

    py, why = bench_peers.ensure_venv("mlserver")
    if py is None:
        return why
    peer = bench_peers.Peer("mlserver", py, ROOT / "models" / MODEL / "model.onnx", work)
    try:
        spec = peer.start()
    except RuntimeError as e:
        peer.stop()
        return str(e)[:300]
    return peer, spec.path


if __name__ == "__main__":
    raise SystemExit(main())
