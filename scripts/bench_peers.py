"""The agent beside model servers on the same ONNX model, side by side in one run.

    python scripts/bench_peers.py [--repeats 3] [--json docs/benchmarks/peers.json] [--plots]

Peers, each installed into its own throw-away venv under .bench-venvs/ (gitignored;
never project dependencies) and serving models/vibration-ae-fp32-onnx/model.onnx over
HTTP on loopback: BentoML (scripts/peers/bento_service.py) and MLServer with a custom
ONNX runtime (scripts/peers/mlserver_runtime.py). A peer that cannot be installed or
started is reported unavailable with the reason; the rest goes on.

Same client for both peers (stdlib http.client, keep-alive, JSON as each server
expects it) and the same load: latency = sequential batch-1 requests (p50/p99);
throughput = CLIENTS threads sending batches of 1/16/64 for a fixed time (windows/s).
Against: (a) the agent in-process (LoadedModel.scores for latency and per batch size,
StreamPipeline at saturation for throughput), (b) the naive script
(scripts/peers/naive.py: session.run + paho.publish QoS 1 to a broker started here).
Every runtime uses one ONNX Runtime thread. Ratios are computed from this run's
medians. Then the agent-as-a-process figures of scripts/bench_agent.py.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_agent  # noqa: E402
import numpy as np  # noqa: E402

from edge_agent.measure.benchstats import Goal, LatencySummary, speedup  # noqa: E402
from edge_agent.pipeline.alarms import AlarmPolicy  # noqa: E402
from edge_agent.pipeline.stream import StreamPipeline  # noqa: E402
from edge_agent.profiles import Profile  # noqa: E402
from edge_agent.runtime.model import load_model  # noqa: E402
from edge_agent.sources.base import Block  # noqa: E402
from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal  # noqa: E402
from tests.mosquitto import Broker, free_port  # noqa: E402

VENVS = ROOT / ".bench-venvs"
PEERS_DIR = ROOT / "scripts" / "peers"
MODEL_DIR = ROOT / "models" / "vibration-ae-fp32-onnx"
BATCHES = (1, 16, 64)
CLIENTS = 4
READY_TIMEOUT_S = 120.0
INSTALL_TIMEOUT_S = 900
ONE_THREAD = Profile(name="bench-1-thread", threads=1)
VENV_PACKAGES = {
    "bentoml": ["bentoml", "onnxruntime", "numpy"],
    "mlserver": ["mlserver", "onnxruntime", "numpy"],
    "plot": ["matplotlib"],
}


def ensure_venv(name: str) -> tuple[Path | None, str]:
    """The venv's python, or None and why it could not be made."""
    d = VENVS / name
    py = d / "bin" / "python"
    marker = d / ".installed"
    if marker.is_file():
        return py, "ready"
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(d)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", *VENV_PACKAGES[name]],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"venv/pip failed: {e}"
    if r.returncode != 0:
        err = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")]
        return None, f"pip install {' '.join(VENV_PACKAGES[name])}: {' '.join(err)[:300]}"
    marker.write_text("ok\n")
    return py, "installed"


# -- the peers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerSpec:
    name: str
    path: str
    body: Callable[[np.ndarray], bytes]


def _bento_body(x: np.ndarray) -> bytes:
    return json.dumps({"x": x.tolist()}).encode()


def _v2_body(x: np.ndarray) -> bytes:
    inp = {"name": "window", "shape": list(x.shape), "datatype": "FP32"}
    inp["data"] = x.ravel().tolist()
    return json.dumps({"inputs": [inp]}).encode()


class Peer:
    def __init__(self, name: str, py: Path, model: Path, work: Path) -> None:
        self.name, self.py, self.model, self.work = name, py, model, work
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = work / f"{name}.log"

    def start(self) -> PeerSpec:
        bindir = self.py.parent
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENCH_MODEL": str(self.model)}
        env["BENTOML_HOME"] = str(self.work / "bentoml-home")
        if self.name == "bentoml":
            cmd = [str(bindir / "bentoml"), "serve", "bento_service:Scorer"]
            cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
            cwd, ready, spec = PEERS_DIR, "/readyz", PeerSpec("bentoml", "/infer", _bento_body)
        else:
            cwd = self._mlserver_dir()
            cmd = [str(bindir / "mlserver"), "start", str(cwd)]
            ready = "/v2/models/vae/ready"
            spec = PeerSpec("mlserver", "/v2/models/vae/infer", _v2_body)
        with self.log.open("wb") as logf:
            # own session: the server's worker processes are stopped with its group
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=logf, stderr=logf, start_new_session=True
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-500:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", ready)
                if c.getresponse().status == 200:
                    return spec
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT_S:g} s")

    def _mlserver_dir(self) -> Path:
        d = self.work / "mlserver"
        (d / "vae").mkdir(parents=True, exist_ok=True)
        (d / "vae" / "mlserver_runtime.py").write_text(
            (PEERS_DIR / "mlserver_runtime.py").read_text()
        )
        settings = {
            "host": "127.0.0.1",
            "http_port": self.port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "metrics_endpoint": None,
            "parallel_workers": 0,
            "debug": False,
        }
        (d / "settings.json").write_text(json.dumps(settings))
        ms = {
            "name": "vae",
            "implementation": "mlserver_runtime.OnnxRuntime",
            "parameters": {"uri": str(self.model)},
        }
        (d / "vae" / "model-settings.json").write_text(json.dumps(ms))
        return d

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


# -- the one client ------------------------------------------------------------------------
def _post(c: http.client.HTTPConnection, path: str, body: bytes) -> None:
    c.request("POST", path, body, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")


def http_latency(port: int, spec: PeerSpec, xs: np.ndarray, n: int) -> LatencySummary:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bodies = [spec.body(xs[i % len(xs)][None]) for i in range(n)]
    for b in bodies[:20]:  # warm-up
        _post(c, spec.path, b)
    lat = []
    for b in bodies:
        t = time.perf_counter()
        _post(c, spec.path, b)
        lat.append((time.perf_counter() - t) * 1e3)
    c.close()
    return LatencySummary.of(lat)


def http_throughput(port: int, spec: PeerSpec, xs: np.ndarray, batch: int, secs: float) -> float:
    bodies = [spec.body(xs[i : i + batch]) for i in range(0, 8 * batch, batch)]
    counts = [0] * CLIENTS
    stop = time.perf_counter() + secs

    def worker(k: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = 0
        while time.perf_counter() < stop:
            _post(c, spec.path, bodies[i % len(bodies)])
            i += 1
        counts[k] = i
        c.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(CLIENTS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) * batch / (time.perf_counter() - t0)


# -- the agent in-process --------------------------------------------------------------------
def inprocess(model_dir: Path, xs: np.ndarray, n: int, secs: float) -> dict[str, Any]:
    m = load_model(model_dir, ONE_THREAD)
    for i in range(50):
        m.scores(xs[i % len(xs)][None])
    lat = []
    for i in range(n):
        t = time.perf_counter()
        m.scores(xs[i % len(xs)][None])
        lat.append((time.perf_counter() - t) * 1e3)
    per_batch = {}
    for b in BATCHES:
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < secs / 3:
            m.scores(xs[(k * b) % (len(xs) - b) :][:b])
            k += 1
        per_batch[b] = k * b / (time.perf_counter() - t0)
    pre = m.card.preprocessing
    samples = SyntheticSignal(SignalSpec(seed=1)).render(0, 400_000)
    pipe = StreamPipeline(
        "bench", m, AlarmPolicy(m.card.threshold), window=pre.window, hop=pre.hop, max_batch=64
    )
    block = pre.hop * 64
    t0 = time.perf_counter()
    for s in range(0, len(samples) - block, block):
        pipe.process(Block(samples[s : s + block], 0.0, s, 100.0))
    pipeline_wps = pipe.stats.windows / (time.perf_counter() - t0)
    return {
        "latency_ms": LatencySummary.of(lat).__dict__,
        "scores_windows_per_s": per_batch,
        "pipeline_windows_per_s": pipeline_wps,
    }


def naive(model: Path, port: int, n: int, batch: int) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, str(PEERS_DIR / "naive.py"), str(model), str(port), str(n), str(batch)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    d = json.loads(r.stdout)
    return {
        "latency_ms": LatencySummary.of([x * 1e3 for x in d["latency_s"]]).__dict__,
        "windows_per_s": d["windows_per_s"],
    }


# -- one run -----------------------------------------------------------------------------------
def _windows(model_dir: Path) -> np.ndarray:
    m = load_model(model_dir, ONE_THREAD, validate=False)
    pre = m.card.preprocessing
    s = SyntheticSignal(SignalSpec(seed=2)).render(0, 4096 * pre.hop + pre.window)
    raw = np.stack([s[i * pre.hop : i * pre.hop + pre.window] for i in range(4096)])
    return m.normalize(raw)  # peers get normalised windows: the model's own input


def _median_of(runs: list[dict[str, Any]], *keys: str) -> float:
    vals = []
    for r in runs:
        v: Any = r
        for k in keys:
            v = v[k]
        vals.append(float(v))
    return statistics.median(vals)


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = MODEL_DIR / "model.onnx"
    xs = _windows(MODEL_DIR)
    out: dict[str, Any] = {
        "model": str(model.relative_to(ROOT)),
        "peers": {},
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as d:
        work = Path(d)
        for name in ("bentoml", "mlserver"):
            py, why = ensure_venv(name)
            if py is None:
                out["peers"][name] = {"available": False, "reason": why}
                print(f"{name}: unavailable: {why}", flush=True)
                continue
            peer = Peer(name, py, model, work)
            try:
                spec = peer.start()
                runs = []
                for _ in range(args.repeats):
                    lat = http_latency(peer.port, spec, xs, args.requests)
                    tput = {
                        b: http_throughput(peer.port, spec, xs, b, args.seconds) for b in BATCHES
                    }
                    runs.append({"latency_ms": lat.__dict__, "windows_per_s": tput})
                out["peers"][name] = _summarise(runs, available=True)
                print(f"{name}: {_line(out['peers'][name])}", flush=True)
            except (RuntimeError, OSError) as e:
                out["peers"][name] = {"available": False, "reason": f"serving failed: {e}"}
                print(f"{name}: unavailable: {e}", flush=True)
            finally:
                peer.stop()
        runs = [
            inprocess(MODEL_DIR, xs, args.requests * 5, args.seconds) for _ in range(args.repeats)
        ]
        out["agent_inprocess"] = {
            "latency_ms": {
                k: _median_of(runs, "latency_ms", k) for k in ("p50", "p99", "mean", "max")
            },
            "windows_per_s": {b: _median_of(runs, "scores_windows_per_s", b) for b in BATCHES},
            "pipeline_windows_per_s": _median_of(runs, "pipeline_windows_per_s"),
            "runs": runs,
        }
        broker = Broker(work / "broker")
        broker.start()
        try:
            nruns = [
                {
                    "latency": naive(model, broker.port, args.requests * 2, 1),
                    "tput": {
                        b: naive(model, broker.port, 4096, b)["windows_per_s"] for b in BATCHES
                    },
                }
                for _ in range(args.repeats)
            ]
        finally:
            broker.stop()
        out["naive"] = {
            "latency_ms": {
                k: _median_of(nruns, "latency", "latency_ms", k) for k in ("p50", "p99")
            },
            "windows_per_s": {b: _median_of(nruns, "tput", b) for b in BATCHES},
        }
    out["ratios"], out["goals"] = _ratios(out)
    if not args.skip_agent:
        out["agent_process"] = bench_agent.run_all(args.agent_repeats, args.latency_seconds)
        out["goals"] += _process_goals(out["agent_process"])
    return out


def _summarise(runs: list[dict[str, Any]], *, available: bool) -> dict[str, Any]:
    return {
        "available": available,
        "latency_ms": {k: _median_of(runs, "latency_ms", k) for k in ("p50", "p99", "mean", "max")},
        "windows_per_s": {b: _median_of(runs, "windows_per_s", b) for b in BATCHES},
        "runs": runs,
    }


def _line(p: dict[str, Any]) -> str:
    tp = ", ".join(f"b={b}: {v:.0f}" for b, v in p["windows_per_s"].items())
    lat = p["latency_ms"]
    return f"latency p50 {lat['p50']:.3f} ms p99 {lat['p99']:.3f} ms; windows/s {tp}"


def _ratios(out: dict[str, Any]) -> tuple[dict[str, Any], list[Goal]]:
    peers = {k: v for k, v in out["peers"].items() if v.get("available")}
    ag = out["agent_inprocess"]
    r: dict[str, Any] = {}
    goals: list[Goal] = []
    if not peers:
        return r, goals
    best_lat = min(peers, key=lambda k: peers[k]["latency_ms"]["p50"])
    best_tp = max(peers, key=lambda k: max(peers[k]["windows_per_s"].values()))
    lat_x = speedup(
        ag["latency_ms"]["p50"], peers[best_lat]["latency_ms"]["p50"], lower_is_better=True
    )
    peer_best_tp = max(peers[best_tp]["windows_per_s"].values())
    tp_x = speedup(ag["pipeline_windows_per_s"], peer_best_tp, lower_is_better=False)
    r["latency_p50_vs_best_peer"] = {"peer": best_lat, "x": lat_x}
    r["latency_p99_vs_best_peer"] = {
        "peer": best_lat,
        "x": speedup(
            ag["latency_ms"]["p99"], peers[best_lat]["latency_ms"]["p99"], lower_is_better=True
        ),
    }
    r["throughput_vs_best_peer"] = {"peer": best_tp, "peer_windows_per_s": peer_best_tp, "x": tp_x}
    r["throughput_same_batch"] = {
        b: {
            k: speedup(ag["windows_per_s"][b], v["windows_per_s"][b], lower_is_better=False)
            for k, v in peers.items()
        }
        for b in BATCHES
    }
    r["naive_latency_vs_inprocess"] = speedup(
        ag["latency_ms"]["p50"], out["naive"]["latency_ms"]["p50"], lower_is_better=True
    )
    r["pipeline_vs_naive_throughput"] = speedup(
        ag["pipeline_windows_per_s"],
        max(out["naive"]["windows_per_s"].values()),
        lower_is_better=False,
    )
    goals.append(
        Goal("in-process latency p50, x lower than best HTTP peer", lat_x, 20.0, at_least=True)
    )
    goals.append(Goal("agent throughput, x the best peer's", tp_x, 5.0, at_least=True))
    return r, goals


def _process_goals(p: dict[str, Any]) -> list[Goal]:
    return [
        Goal(
            "agent RSS with one model (peak), MB", p["rss_peak_mb"]["median"], 80.0, at_least=False
        ),
        Goal("cold start to READY, s", p["cold_start_to_ready_s"]["median"], 2.0, at_least=False),
    ]


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 2**20, 1),
    }


def report(out: dict[str, Any]) -> None:
    m = out["machine"]
    print(
        f"\nmachine: {m['cpu']}, {m['nproc']} CPUs (shared), {m['memory_gb']} GB, {m['platform']}"
    )
    print(f"model {out['model']}, medians of {out['repeats']} repeats; latency batch 1 in ms")
    print(
        f"{'path':<22}{'p50 ms':>10}{'p99 ms':>10}"
        + "".join(f"{'w/s b=' + str(b):>14}" for b in BATCHES)
    )
    rows = [(k, v) for k, v in out["peers"].items() if v.get("available")]
    for k, v in out["peers"].items():
        if not v.get("available"):
            print(f"{k:<22} unavailable: {v['reason']}")
    rows.append(("naive script", out["naive"]))
    rows.append(("agent in-process", out["agent_inprocess"]))
    for k, v in rows:
        lat = v["latency_ms"]
        tp = "".join(f"{v['windows_per_s'][b]:>14.0f}" for b in BATCHES)
        print(f"{k:<22}{lat['p50']:>10.3f}{lat['p99']:>10.3f}{tp}")
    pw = out["agent_inprocess"]["pipeline_windows_per_s"]
    print(f"agent pipeline at saturation: {pw:.0f} windows/s")
    r = out["ratios"]
    if r:
        lp, l99, tb = (
            r["latency_p50_vs_best_peer"],
            r["latency_p99_vs_best_peer"],
            r["throughput_vs_best_peer"],
        )
        print(
            f"in-process latency p50 is {lp['x']:.1f}x lower than {lp['peer']} "
            f"(p99: {l99['x']:.1f}x); pipeline throughput is {tb['x']:.1f}x "
            f"{tb['peer']}'s best ({tb['peer_windows_per_s']:.0f} w/s)"
        )
        print(
            f"naive script: in-process latency {r['naive_latency_vs_inprocess']:.1f}x lower; "
            f"pipeline {r['pipeline_vs_naive_throughput']:.1f}x its best throughput"
        )
    if "agent_process" in out:
        bench_agent.print_report(out["agent_process"])
    for g in out["goals"]:
        op = ">=" if g.at_least else "<"
        print(f"goal {g.name}: {g.measured:.2f} {op} {g.target:g}: {'met' if g.met else 'NOT met'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=400, help="batch-1 requests per latency run")
    ap.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    ap.add_argument("--agent-repeats", type=int, default=5)
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--skip-agent", action="store_true", help="peers only")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--plots", help="write PNG plots into this directory (matplotlib venv)")
    ap.add_argument("--core-json", help="`edge-agent bench --json` output for the int8 plot")
    args = ap.parse_args()
    if args.core_json and not Path(args.core_json).is_file():
        # before minutes of measuring, not at the plot step after them
        ap.error(
            f"--core-json {args.core_json}: no such file "
            "(write it with `python -m edge_agent bench --json > FILE`)"
        )
    out = run(args)
    out["machine"] = machine()
    out["command"] = " ".join(["python", "scripts/bench_peers.py", *sys.argv[1:]])
    report(out)
    data = dict(out, goals=[{**g.__dict__, "met": g.met} for g in out["goals"]])
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    if args.plots:
        py, why = ensure_venv("plot")
        if py is None:
            print(f"plots skipped: {why}")
        else:
            src = Path(args.json) if args.json else Path(tempfile.mkstemp(suffix=".json")[1])
            if not args.json:
                src.write_text(json.dumps(data))
            cmd = [str(py), str(PEERS_DIR / "plot.py"), str(src), args.plots]
            if args.core_json:
                cmd.append(args.core_json)
            subprocess.run(cmd, check=True, timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
