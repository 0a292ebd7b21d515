"""Serial ingest throughput: parser alone vs the full source reading a real pty.

Side by side in one run, for the binary frame format and CSV lines:
- parser:  bytes already in memory, fed in 4 KiB chunks (the pure-Python ceiling);
- source:  SerialSource.read() on a pseudo-terminal opened with pyserial, a separate
           writer process pushing the same bytes as fast as the pty takes them.
CPU is time.process_time() of this process only (the writer is another process),
so "cpu %" is the agent side's cost. Usage:

    PYTHONPATH=. python scripts/bench_serial.py [--frames 20000] [--samples-per-frame 32]
                                                [--channels 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tty
from dataclasses import dataclass

import numpy as np

from edge_agent.sources.framing import encode_frame
from edge_agent.sources.serial import Options, SerialSource, make_parser

_WRITER = """
import os, sys
fd = int(sys.argv[1]); data = open(sys.argv[2], "rb").read(); view = memoryview(data)
while view:
    view = view[os.write(fd, view[:65536]):]
"""


@dataclass
class Result:
    name: str
    samples: int
    frames: int
    wall_s: float
    cpu_s: float

    def row(self) -> str:
        return (
            f"{self.name:<18} {self.samples / self.wall_s:>12,.0f}"
            f" {self.frames / self.wall_s:>11,.0f}"
            f" {self.wall_s:>7.3f} {100 * self.cpu_s / self.wall_s:>6.0f}%"
            f" {self.samples / max(self.cpu_s, 1e-9):>14,.0f}"
        )


def _wire(fmt: str, frames: int, per: int, ch: int) -> bytes:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(frames * per, ch)).astype(np.float32)
    if fmt == "binary":
        return b"".join(
            encode_frame(data[i * per : (i + 1) * per], frame_seq=i) for i in range(frames)
        )
    return b"".join(",".join(f"{v:.5f}" for v in row).encode() + b"\r\n" for row in data)


def bench_parser(fmt: str, wire: bytes, ch: int) -> Result:
    chans = tuple(f"c{i}" for i in range(ch))
    p = make_parser(fmt, chans)
    n = frames = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(wire), 4096):
        out = p.feed(wire[i : i + 4096])
        n += len(out.samples)
        frames += out.frames
    return Result(f"{fmt} parser", n, frames, time.perf_counter() - w0, time.process_time() - c0)


def bench_source(fmt: str, wire: bytes, ch: int, expect: int, tmpdir: str) -> Result:
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    blob = os.path.join(tmpdir, f"wire-{fmt}.bin")
    with open(blob, "wb") as f:
        f.write(wire)
    chans = tuple(f"c{i}" for i in range(ch))
    src = SerialSource("bench", Options(port=path, channels=chans, format=fmt))  # type: ignore[arg-type]
    src.open()
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(master), blob], pass_fds=(master,)
    )
    deadline = time.monotonic() + 120
    while n < expect and time.monotonic() < deadline:
        blk = src.read(0.5)
        if blk is not None:
            n += len(blk.samples)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    writer.wait(10)
    frames = src.snapshot_counters().get("frames", 0)
    src.close()
    os.close(master)
    os.close(slave)
    return Result(f"{fmt} source+pty", n, frames, wall, cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--samples-per-frame", type=int, default=32)
    ap.add_argument("--channels", type=int, default=4)
    a = ap.parse_args()
    import tempfile

    total = a.frames * a.samples_per_frame
    print(
        f"{a.frames} frames x {a.samples_per_frame} samples x {a.channels} channels"
        f" = {total:,} samples; csv: {total:,} lines"
    )
    print(
        f"{'':<18} {'samples/s':>12} {'frames/s':>11} {'wall s':>7} {'cpu':>7}"
        f" {'samples/cpu-s':>14}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("binary", "csv"):
            wire = _wire(fmt, a.frames, a.samples_per_frame, a.channels)
            p = bench_parser(fmt, wire, a.channels)
            s = bench_source(fmt, wire, a.channels, p.samples, tmp)
            print(p.row())
            print(s.row())
            if s.samples != p.samples:
                print(f"  source got {s.samples} of {p.samples} samples")
            print(
                f"  {fmt}: {len(wire) / 1e6:.1f} MB on the wire; source/parser samples/s ratio"
                f" {(s.samples / s.wall_s) / (p.samples / p.wall_s):.2f};"
                f" at 115200 baud this format carries"
                f" {11520 / (len(wire) / p.samples):,.0f} samples/s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
