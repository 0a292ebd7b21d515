"""The agent's resident memory in each configuration a device runs, side by side.

    python scripts/measure_rss.py [--repeats 3] [--settle 3] [--json OUT] [--only NAME,..]
                                  [--baseline-root DIR] [--source synthetic|replay]
                                  [--no-mqtt]

One real `edge-agent run` process per configuration and repeat, one real-time stream
(synthetic source, 100 Hz, blocks of 16) against a mosquitto this script starts; time
from spawn to READY=1 on $NOTIFY_SOCKET, then after `--settle` seconds of scoring VmRSS
and VmHWM (peak) from /proc/<pid>/status. Configurations:

- `onnx-ota-off`, `tflite-ota-off`: `[ota] enabled = false`
- `onnx-no-root`, `tflite-no-root`: the default `[ota]`: slots opened, no trust anchor,
  no updater
- `onnx-announce-root`: `ota.root_file` (the announcement updater)
- `onnx-tuf-channel`: the TUF update channel (image + director repositories made with the
  real `edge-ota`, served by `edge-ota serve`): the updater refreshes both at start
- `onnx-tuf-slot`: the same channel after a directed v2 was installed, shadowed,
  promoted and committed: the restarted agent serves v2 from its slot (boot-time seal
  check against the image root) and refreshes the channel

ONNX is the demo model's fp32 variant (what the OTA configurations install), TFLite its
int8-tflite variant. Medians of the repeats; every run is printed. The mapped shared
objects of a few heavy packages (cryptography's Rust core, onnxruntime, litert) are
listed per configuration from /proc/<pid>/maps: what the resident process holds.

`--source replay` feeds the stream the same demo signal from a .npy file (rendered once
by this script, replayed in real time in a loop) instead of the synthetic generator,
whose noise needs numpy.random (~3 MB resident): what a gateway with a real source
(serial, Modbus, MQTT, a file) pays.

`--no-mqtt` sets `[mqtt] enabled = false` (records kept in the outbox only): paho, and
the ssl, urllib.request and email it imports, are then not loaded.

`--baseline-root DIR` (a checkout of another commit, e.g. `git worktree add DIR HEAD~3`)
runs that tree's agent too, alternately with this one for every configuration and
repeat, and prints both side by side. Each measured tree is byte-compiled first
(`compileall`, as the package's postinst does): a unit runs from .pyc files, and a
source compiled at import leaves its garbage in the heap (this checkout may run with
PYTHONDONTWRITEBYTECODE).

`--drop-caches` (root only) empties the page cache first (`sync`, then 3 into
/proc/sys/vm/drop_caches), so the shared libraries are read back from disk as after a
gateway's boot. Right after they were written (a fresh `pip install`) they sit in the
page cache in large folios, and mapping any part maps the whole folio: the same agent
measured 87.3 MB there and 72.4 MB after the drop (file-backed 53.3 -> 38.4 MB; the
anonymous part, the agent's own, 33.8-34.0 both times).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mosquitto import Broker  # noqa: E402
from tests.notify_socket import NotifySocket  # noqa: E402

READY_TIMEOUT_S = 60.0
COMMIT_TIMEOUT_S = 120.0
HEAVY = ("cryptography", "onnxruntime", "ai_edge_litert", "_cffi_backend", "nacl")
ALL = (
    "onnx-ota-off",
    "onnx-no-root",
    "onnx-announce-root",
    "onnx-tuf-channel",
    "onnx-tuf-slot",
    "tflite-ota-off",
    "tflite-no-root",
)


def ota_cli(*args: str) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "ota", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if p.returncode != 0:
        raise RuntimeError(f"edge-ota {' '.join(args)}: {p.stderr}")
    return p.stdout


@contextmanager
def serve(d: Path) -> Iterator[str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "ota", "serve", str(d), "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        if " at http://" not in line:
            raise RuntimeError(f"edge-ota serve: {line!r}")
        yield line.rsplit(" at ", 1)[1].strip().rstrip("/")
    finally:
        p.terminate()
        p.communicate(timeout=10)


class Site:
    """Keys, an announcement root, image and director repositories (real edge-ota)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        keys = work / "keys"
        for name in ("alice", "bob", "online", "director-root", "director-online"):
            ota_cli("keygen", "--out", str(keys), "--name", name)
        self.k = {n: str(keys / f"{n}.key") for n in ("alice", "bob", "online")}
        self.director_online = str(keys / "director-online.key")
        self.root_file = work / "root.json"
        ota_cli("root", "init", "--key", str(keys / "alice.pub"), "--key", str(keys / "bob.pub"),
                "--threshold", "2", "--expires", "365d", "--out", str(self.root_file))  # fmt: skip
        for k in ("alice", "bob"):
            ota_cli("root", "sign", "--key", self.k[k], str(self.root_file))
        self.image, self.director = work / "image", work / "director"
        ota_cli(
            "repo", "init", str(self.image), "--kind", "image", "--root-key", self.k["alice"],
            "--root-key", self.k["bob"], "--root-threshold", "2", "--targets-key",
            self.k["alice"], "--targets-key", self.k["bob"], "--targets-threshold", "2",
            "--online-key", self.k["online"],
        )  # fmt: skip
        ota_cli(
            "repo", "init", str(self.director), "--kind", "director", "--root-key",
            str(keys / "director-root.key"), "--online-key", self.director_online,
        )  # fmt: skip

    def release_and_direct(self, version: int) -> None:
        model = self.work / f"model-v{version}"
        shutil.copytree(ROOT / "models" / "vibration-ae-fp32-onnx", model)
        card = json.loads((model / "model.json").read_text())
        card["version"] = version
        (model / "model.json").write_text(json.dumps(card, indent=1))
        bundle = self.work / f"vib-v{version}.bundle"
        ota_cli("build", str(model), "--profiles", "x86-generic", "--expires", "30d",
                "--out", str(bundle))  # fmt: skip
        out = ota_cli(
            "repo", "add", str(self.image), str(bundle), "--key", self.k["alice"],
            "--key", self.k["bob"], "--online-key", self.k["online"],
        )  # fmt: skip
        ota_cli(
            "director", "set", str(self.director), "--image", str(self.image), "--target",
            json.loads(out)["target"], "--group", "line-1", "--online-key",
            self.director_online,
        )  # fmt: skip


def replay_file(work: Path) -> Path:
    """The demo signal (as the synthetic source renders it) in a .npy file."""
    import numpy as np

    from edge_agent.sources.synth_signal import SignalSpec, SyntheticSignal

    f = work / "signal.npy"
    if not f.exists():
        np.save(f, SyntheticSignal(SignalSpec(seed=1, anomalies=False)).render(0, 60_000))
    return f


def source_table(kind: str, work: Path) -> str:
    if kind == "replay":
        from edge_agent.sources.synth_signal import CHANNELS

        cols = ", ".join(f'"{c}"' for c in CHANNELS)
        return (
            f'{{ kind = "replay", path = "{replay_file(work)}", columns = [{cols}], '
            "rate_hz = 100.0, block = 16, speed = 1.0, loop = true }"
        )
    return '{ kind = "synthetic", seed = 1, block = 16, speed = 1.0, anomalies = false }'


def write_config(
    path: Path,
    port: int,
    state: Path,
    backend: str,
    ota: list[str],
    *,
    source: str = "",
    mqtt: bool = True,
) -> Path:
    variant = "int8-tflite" if backend == "tflite" else "fp32-onnx"
    source = source or source_table("synthetic", path.parent)
    lines = [
        'device_id = "rss-gw"',
        f'state_dir = "{state}"',
        'profile = "x86-generic"',
        "[mqtt]",
        *([] if mqtt else ["enabled = false"]),
        'host = "127.0.0.1"',
        f"port = {port}",
        "telemetry_interval_s = 60",
        "[ota]",
        'group = "line-1"',
        "shadow_windows = 20",
        "trial_windows = 20",
        *ota,
        "[[streams]]",
        'name = "s0"',
        'model = "vibration-ae"',
        f'variant = "{variant}"',
        f"source = {source}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0])
    return out


def _heavy_mapped(pid: int) -> list[str]:
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        for name in HEAVY:
            if f"/{name}/" in path or f"/{name}." in path:
                found.add(name)
    return sorted(found)


def _read_status(state: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((state / "status.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def compile_tree(root: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "edge_agent", "ota"],
        cwd=root, stdout=subprocess.DEVNULL, check=True,
    )  # fmt: skip


def run_once(
    cfg: Path, state: Path, work: Path, settle_s: float, root: Path = ROOT
) -> dict[str, Any]:
    sock = NotifySocket(work / f"notify-{time.monotonic_ns()}")
    env = {**os.environ, "NOTIFY_SOCKET": sock.address}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)],
        env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        sock.wait_for("READY", READY_TIMEOUT_S)
        ready = next(t for t, m in sock.messages if "READY" in m) - t0
        time.sleep(settle_s)
        kb = _status_kb(proc.pid)
        heavy = _heavy_mapped(proc.pid)
        st = _read_status(state)
    finally:
        _stop(proc)
        sock.close()
    streams = st.get("streams") or [{}]
    return {
        "ready_s": ready,
        "rss_mb": kb["VmRSS"] / 1024,
        "peak_mb": kb["VmHWM"] / 1024,
        "anon_mb": kb["RssAnon"] / 1024,
        "file_mb": kb["RssFile"] / 1024,
        "mapped": heavy,
        "model_version": (streams[0].get("model") or {}).get("version"),
        "ota_phase": (st.get("ota") or {}).get("phase") or (st.get("ota") or {}).get("state"),
    }


def commit_v2(cfg: Path, state: Path, root: Path = ROOT) -> None:
    """Run the agent until the directed v2 is committed (then stop it)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + COMMIT_TIMEOUT_S
        while time.monotonic() < deadline:
            st = _read_status(state)
            streams = st.get("streams") or [{}]
            version = (streams[0].get("model") or {}).get("version")
            if (st.get("ota") or {}).get("phase") == "committed" and version == 2:
                return
            time.sleep(0.5)
        raise RuntimeError(f"v2 not committed within {COMMIT_TIMEOUT_S} s: {st.get('ota')}")
    finally:
        _stop(proc)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rss_mb": statistics.median(r["rss_mb"] for r in runs),
        "peak_mb": statistics.median(r["peak_mb"] for r in runs),
        "ready_s": statistics.median(r["ready_s"] for r in runs),
        "mapped": runs[-1]["mapped"],
        "runs": runs,
    }


def measure(
    names: list[str],
    repeats: int,
    settle_s: float,
    baseline: Path | None = None,
    source: str = "synthetic",
    *,
    mqtt: bool = True,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "settle_s": settle_s, "repeats": repeats, "source": source, "mqtt": mqtt,
        "configs": {},
    }  # fmt: skip
    trees = [("this", ROOT)]
    if baseline is not None:
        out["baseline_root"] = str(baseline)
        out["baseline"] = {}
        trees.insert(0, ("baseline", baseline))
    for _, root in trees:
        compile_tree(root)
    with tempfile.TemporaryDirectory(prefix="rss-") as d:
        work = Path(d)
        broker = Broker(work / "broker")
        broker.start()
        site = Site(work)
        site.release_and_direct(2)
        src = source_table(source, work)
        try:
            with serve(site.image) as image_url, serve(site.director) as director_url:
                channel = [
                    f'image_url = "{image_url}"',
                    f'director_url = "{director_url}"',
                    f'image_root_file = "{site.image / "metadata" / "1.root.json"}"',
                    f'director_root_file = "{site.director / "metadata" / "1.root.json"}"',
                ]
                plans: dict[str, tuple[str, list[str]]] = {
                    "onnx-ota-off": ("onnx", ["enabled = false"]),
                    "onnx-no-root": ("onnx", []),
                    "onnx-announce-root": ("onnx", [f'root_file = "{site.root_file}"']),
                    # nothing directed to this group: the refresh runs, nothing installs
                    "onnx-tuf-channel": ("onnx", [*channel[:4]]),
                    "onnx-tuf-slot": ("onnx", channel),
                    "tflite-ota-off": ("tflite", ["enabled = false"]),
                    "tflite-no-root": ("tflite", []),
                }
                for name in names:
                    backend, ota = plans[name]
                    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
                    for i in range(repeats):
                        for label, root in trees:  # alternately: the same load for both
                            state = work / f"{name}-{label}-{i}"
                            cfg = write_config(work / f"{name}-{label}-{i}.toml", broker.port,
                                               state, backend, ota, source=src,
                                               mqtt=mqtt)  # fmt: skip
                            if name == "onnx-tuf-channel":  # a group nothing is directed to
                                cfg.write_text(cfg.read_text().replace('"line-1"', '"idle"'))
                            if name == "onnx-tuf-slot":
                                commit_v2(cfg, state, root)
                            r = run_once(cfg, state, work, settle_s, root)
                            runs[label].append(r)
                            tag = f" [{label}]" if baseline is not None else ""
                            print(
                                f"{name:20} run {i}{tag}: RSS {r['rss_mb']:5.1f} MB (peak "
                                f"{r['peak_mb']:5.1f}, anon {r['anon_mb']:5.1f}, file "
                                f"{r['file_mb']:5.1f}), READY {r['ready_s']:.2f} s, model "
                                f"v{r['model_version']}, ota {r['ota_phase']}, mapped "
                                f"{','.join(r['mapped'])}",
                                flush=True,
                            )
                    out["configs"][name] = _summary(runs["this"])
                    if baseline is not None:
                        out["baseline"][name] = _summary(runs["baseline"])
        finally:
            broker.stop()
    return out


def print_table(m: dict[str, Any]) -> None:
    print(
        f"\nmedians of {m['repeats']} runs, RSS after {m['settle_s']:g} s of scoring, "
        f"{m['source']} source{'' if m['mqtt'] else ', MQTT off'}"
    )
    if "baseline" in m:
        print(f"baseline: {m['baseline_root']}")
        print(
            "| configuration | baseline RSS MB | this tree RSS MB | change MB"
            " | READY s (base/this) |"
        )
        print("|---|---|---|---|---|")
        for name, c in m["configs"].items():
            b = m["baseline"][name]
            print(
                f"| {name} | {b['rss_mb']:.1f} | {c['rss_mb']:.1f} | "
                f"{c['rss_mb'] - b['rss_mb']:+.1f} | {b['ready_s']:.2f}/{c['ready_s']:.2f} |"
            )
        print()
    print("| configuration | RSS MB | peak MB | READY s | heavy .so mapped |")
    print("|---|---|---|---|---|")
    for name, c in m["configs"].items():
        print(
            f"| {name} | {c['rss_mb']:.1f} | {c['peak_mb']:.1f} | {c['ready_s']:.2f} | "
            f"{', '.join(c['mapped'])} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of scoring before RSS")
    ap.add_argument("--only", default=",".join(ALL), help="comma-separated configurations")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--source", choices=("synthetic", "replay"), default="synthetic")
    ap.add_argument("--no-mqtt", action="store_true", help="[mqtt] enabled = false")
    ap.add_argument(
        "--baseline-root", type=Path, help="another checkout, measured alternately with this one"
    )
    ap.add_argument(
        "--drop-caches",
        action="store_true",
        help="root: empty the page cache first (libraries as after a boot)",
    )
    a = ap.parse_args()
    if a.drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    names = [n for n in a.only.split(",") if n]
    unknown = set(names) - set(ALL)
    if unknown:
        ap.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    base = a.baseline_root.resolve() if a.baseline_root else None
    m = measure(names, a.repeats, a.settle, base, a.source, mqtt=not a.no_mqtt)
    print_table(m)
    if a.json:
        a.json.write_text(json.dumps(m, indent=1))


if __name__ == "__main__":
    main()
