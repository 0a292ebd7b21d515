"""Benchmark the device side of OTA: time from announcement to the new model serving, and
the longest pause in window processing during promote and during an automatic rollback,
against the same pipeline's steady state in the same run.

A real signed bundle of the real fp32 model (version 2), the real Updater and SlotStore,
and a StreamPipeline fed by a paced thread with the synthetic signal (like a source at
`--speed` x real time). Each block records how late its processing finished relative to
when it was due; a pause is that lateness. Windows are counted against the samples fed,
so a dropped window would show.

Run: /work/main/.venv/bin/python scripts/bench_ota.py --speed 10 --shadow 200 --trial 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ota"))  # test model builders (onnx helper API)

from otamodels import FP32, copy_model, nan_model  # noqa: E402

from edge_agent.config import OtaConfig, SourceSpec, StreamConfig  # noqa: E402
from edge_agent.pipeline.stream import StreamPipeline  # noqa: E402
from edge_agent.profiles import Profile  # noqa: E402
from edge_agent.runtime.model import load_model  # noqa: E402
from edge_agent.sources.base import Block  # noqa: E402
from edge_agent.sources.synth_signal import SyntheticSignal  # noqa: E402
from edge_agent.sources.synthetic import Options  # noqa: E402
from edge_agent.streams import build_policy  # noqa: E402
from edge_agent.updates.updater import Updater, UpdateTarget  # noqa: E402
from ota.announce import Announcement  # noqa: E402
from ota.build import plan_bundle  # noqa: E402
from ota.bundle import add_signatures, read_header, write_bundle  # noqa: E402
from ota.keys import PrivateKey  # noqa: E402
from ota.root import Root  # noqa: E402
from ota.signing import sign_bytes  # noqa: E402

BLOCK = 32
RATE_HZ = 100.0
WINDOW, HOP = 64, 16


class Feeder:
    def __init__(self, pipe: StreamPipeline, speed: float) -> None:
        self.pipe = pipe
        self.period = BLOCK / (RATE_HZ * speed)
        self.gain = 1.0
        self.stop = threading.Event()
        self.log: list[tuple[float, float]] = []  # (due, finished - due)
        self.samples = 0

    def run(self) -> None:
        sig = SyntheticSignal()
        start = time.perf_counter()
        k = 0
        while not self.stop.is_set():
            due = start + k * self.period
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            x = (sig.render(self.samples, BLOCK) * self.gain).astype(np.float32)
            self.pipe.process(Block(x, self.samples / RATE_HZ, self.samples, RATE_HZ))
            self.log.append((due, time.perf_counter() - due))
            self.samples += BLOCK
            k += 1

    def worst(self, t0: float, t1: float) -> float:
        late = [lat for due, lat in self.log if t0 <= due <= t1]
        return max(late) * 1000 if late else float("nan")


def make_bundle(d: Path, model_dir: Path, keys: list[PrivateKey], now: datetime) -> Path:
    plan = plan_bundle(
        model_dir, profiles=["bench"], created=now - timedelta(hours=1),
        expires=now + timedelta(days=1), min_agent_version="0.1.0",
    )  # fmt: skip
    out = d / f"{model_dir.name}.bundle"
    write_bundle(out, plan.manifest, plan.sources)
    add_signatures(out, [sign_bytes(k, read_header(out).manifest_bytes) for k in keys])
    return out


def announcement(bundle: Path, now: datetime) -> bytes:
    h = read_header(bundle)
    return Announcement(
        json.loads(h.manifest_bytes), h.signatures, bundle.as_uri(), bundle.stat().st_size,
        hashlib.sha256(bundle.read_bytes()).hexdigest(), now,
    ).to_payload()  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as d:
        return _run(args, Path(d))


def _run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    keys = [PrivateKey.generate() for _ in range(2)]
    root = Root(version=1, expires=now + timedelta(days=1), threshold=2,
                keys={k.keyid: k.public for k in keys})  # fmt: skip
    good = make_bundle(tmp, copy_model(tmp / "good-v2", 2), keys, now)
    bad = make_bundle(tmp, nan_model(tmp / "degrading-v3", 3, above=20.0), keys, now)
    profile = Profile(name="bench")
    model = load_model(FP32, profile)
    sc = StreamConfig(name="vib", source=SourceSpec("synthetic", Options()))
    pipe = StreamPipeline("vib", model, build_policy(sc, model), window=WINDOW, hop=HOP)
    times: list[tuple[str, float]] = []
    ota = OtaConfig(shadow_windows=args.shadow, trial_windows=args.trial)
    up = Updater(
        state_dir=tmp / "state", ota=ota, profile=profile, root=root,
        targets=[UpdateTarget(pipe, sc)],
        publish=lambda body: times.append((body["state"], time.perf_counter())),
    )  # fmt: skip
    feeder = Feeder(pipe, args.speed)
    th = threading.Thread(target=feeder.run, daemon=True)
    th.start()
    time.sleep(args.warmup)
    t_ann = time.perf_counter()
    r1 = up.process(announcement(good, now))
    at = dict(times)
    # A degrading candidate: passes shadow, then its inputs grow and it outputs NaN.
    times.clear()
    result: list[str] = []
    t2 = threading.Thread(target=lambda: result.append(up.process(announcement(bad, now))))
    t2.start()
    while "promoted" not in dict(times) and t2.is_alive():
        time.sleep(0.001)
    feeder.gain = 50.0
    t2.join()
    at2 = dict(times)
    time.sleep(0.5)
    feeder.stop.set()
    th.join()
    steady = feeder.worst(t_ann - args.warmup + 0.2, t_ann)
    promote = feeder.worst(at["promoted"] - 0.25, at["promoted"] + 0.25)
    rollback = feeder.worst(at2["rolled_back"] - 0.25, at2["rolled_back"] + 0.25)
    expected = (feeder.samples - WINDOW) // HOP + 1
    st = pipe.stats
    return {
        "speed": args.speed,
        "windows_per_s": RATE_HZ * args.speed / HOP,
        "results": [r1, result[0] if result else None],
        "announce_to_shadow_s": round(at["shadow"] - t_ann, 3),
        "announce_to_serving_s": round(at["promoted"] - t_ann, 3),
        "shadow_windows": args.shadow,
        "steady_worst_block_ms": round(steady, 2),
        "promote_worst_block_ms": round(promote, 2),
        "rollback_worst_block_ms": round(rollback, 2),
        "promote_vs_steady": round(promote / steady, 2),
        "rollback_vs_steady": round(rollback / steady, 2),
        "windows_expected": expected,
        "windows_scored": st.windows,
        "windows_skipped": st.skipped_windows,
        "windows_dropped": expected - st.windows - st.skipped_windows,
        "block_period_ms": round(feeder.period * 1000, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speed", type=float, default=10.0, help="x real time (100 Hz source)")
    p.add_argument("--shadow", type=int, default=200)
    p.add_argument("--trial", type=int, default=200)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for k, v in out.items():
        print(f"{k:<26} {v}")


if __name__ == "__main__":
    main()
