"""Camera frames per second with the image model, int8 vs fp32, side by side in one run.

A video of the synthetic inspection view (`synth_scene`, VGA 640x480 MJPEG, a quarter
of the frames defective) is written once, then three figures are taken per variant
of `inspection-ae`:
- model:    `StreamPipeline.process` on one prepared frame at a time (normalise,
            infer, score, alarm policy), frames already decoded: the model's ceiling;
- decode:   `cv2.VideoCapture.read` + `prepare_frame` (gray, area resize, /255)
            alone, shared by every variant: the camera side's ceiling;
- agent:    the real path: `CameraSource` (grabber thread, latest-frame policy, file
            not paced: `realtime = false`) -> `SourceRunner` -> `StreamPipeline`,
            scored frames/s and frames skipped; CPU is this process (all threads).
Usage:

    PYTHONPATH=. python scripts/bench_camera.py [--frames 600] [--repeats 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.pipeline.alarms import AlarmPolicy
from edge_agent.pipeline.stream import StreamPipeline
from edge_agent.profiles import Profile
from edge_agent.runtime.model import LoadedModel, load_model
from edge_agent.runtime.registry import runtime_available
from edge_agent.sources.base import Block
from edge_agent.sources.camera import CameraSource, Options, prepare_frame
from edge_agent.sources.runner import SourceRunner
from edge_agent.sources.synth_scene import SceneSpec, frames, to_bgr

MODELS = Path(__file__).resolve().parents[1] / "models"
VARIANTS = ("fp32-onnx", "int8-onnx", "int8-tflite")
VGA = SceneSpec(height=480, width=640)


def write_video(path: Path, n: int) -> Path:
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for img, _ in frames(5, n, VGA, defect_rate=0.25):
        w.write(to_bgr(img))
    w.release()
    return path


def decoded(path: Path) -> tuple[np.ndarray, float, float]:
    """All frames prepared for a 32x32 model; decode+prepare frames/s and CPU per frame."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    c0, t0 = time.process_time(), time.perf_counter()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(prepare_frame(frame, 32, 32))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cap.release()
    return np.concatenate(out), len(out) / wall, cpu / len(out)


def _pipeline(model: LoadedModel) -> StreamPipeline:
    return StreamPipeline("bench", model, AlarmPolicy(model.card.threshold), window=1, hop=1)


def model_fps(model: LoadedModel, x: np.ndarray) -> float:
    pipe = _pipeline(model)
    t0 = time.perf_counter()
    for i in range(len(x)):
        pipe.process(Block(x[i : i + 1], 0.0, i, 30.0))
    return len(x) / (time.perf_counter() - t0)


def agent_fps(model: LoadedModel, video: Path) -> dict[str, float]:
    src = CameraSource("bench", Options(url=str(video), width=32, height=32, fps_cap=1e6,
                                        realtime=False))  # fmt: skip
    runner = SourceRunner(src)
    pipe = _pipeline(model)
    c0, t0 = time.process_time(), time.perf_counter()
    runner.start()
    scored = 0
    try:
        while not runner.done:
            for b in runner.get(0.2):
                pipe.process(b)
                scored += 1
    finally:
        runner.stop()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    skipped = src.snapshot_counters().get("frames_skipped", 0) + runner.dropped_blocks
    return {
        "scored_fps": scored / wall,
        "scored": scored,
        "skipped": skipped,
        "cpu_per_scored_ms": 1e3 * cpu / max(scored, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    profile = Profile(name="bench", threads=1)
    with tempfile.TemporaryDirectory() as td:
        video = write_video(Path(td) / "inspection.avi", a.frames)
        dec = [decoded(video) for _ in range(a.repeats)]
        x = dec[0][0]
        decode_fps = statistics.median(d[1] for d in dec)
        decode_cpu_ms = 1e3 * statistics.median(d[2] for d in dec)
        models = {
            v: load_model(MODELS / f"inspection-ae-{v}", profile)
            for v in VARIANTS
            if runtime_available(v.split("-")[1])
        }
        res: dict[str, dict[str, Any]] = {v: {"model_fps": [], "agent": []} for v in models}
        for _ in range(a.repeats):  # interleaved: drift on a shared machine hits all alike
            for v, m in models.items():
                res[v]["model_fps"].append(model_fps(m, x))
                res[v]["agent"].append(agent_fps(m, video))
    print(f"{len(x)} frames 640x480 MJPEG -> 32x32, median of {a.repeats} interleaved runs")
    print(f"decode+prepare alone: {decode_fps:,.0f} frames/s ({decode_cpu_ms:.2f} ms CPU/frame)")
    print(
        f"{'variant':<12} {'model fps':>10} {'agent fps':>10} {'skipped':>8} {'CPU ms/frame':>13}"
    )
    summary: dict[str, Any] = {"frames": len(x), "decode_fps": decode_fps,
                               "decode_cpu_ms": decode_cpu_ms, "variants": {}}  # fmt: skip
    for v, r in res.items():
        mf = statistics.median(r["model_fps"])
        ag = {k: statistics.median(d[k] for d in r["agent"]) for k in r["agent"][0]}
        summary["variants"][v] = {"model_fps": mf, **ag}
        print(
            f"{v:<12} {mf:>10,.0f} {ag['scored_fps']:>10,.0f} {ag['skipped']:>8.0f}"
            f" {ag['cpu_per_scored_ms']:>13.2f}"
        )
    fp = summary["variants"].get("fp32-onnx")
    for v in ("int8-onnx", "int8-tflite"):
        s = summary["variants"].get(v)
        if fp and s:
            print(
                f"{v} vs fp32-onnx: model {s['model_fps'] / fp['model_fps']:.2f}x, "
                f"agent {s['scored_fps'] / fp['scored_fps']:.2f}x frames/s"
            )
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
