"""A synthetic fixed inspection view: a machined plate on a conveyor under a camera.

Pure numpy, no camera or data set needed: it feeds the image model's build
(scripts/build_image_models.py), the camera tests (which write it to a video file
with OpenCV) and the camera benchmark. Each frame is grayscale uint8
(height, width); `to_bgr` makes the 3-channel frame a camera or video file gives.

Normal variation, which the model must accept: the plate's position jitters by up
to `jitter_px`, lighting gain and offset drift, the belt's texture moves, and the
sensor adds noise. Defects, which it must flag:
- missing_hole: one of the two holes was not drilled
- scratch: a dark line across the plate
- foreign_object: a bright or dark blob (a bolt, a rag) on or beside the plate
- misplaced: the plate sits well off its fixture position
- missing_part: the fixture is empty
Edges are anti-aliased, so sub-pixel jitter changes pixels smoothly, as with a lens.

`model_samples` gives what the camera source makes of such frames for a model of
height x width (gray, area-resized, /255) without OpenCV: the scene is rendered at
3 x 4 times the model's size, and an area resize by integer factors is a block mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["DEFECTS", "SceneSpec", "frames", "model_samples", "render", "to_bgr"]

DEFECTS = ("missing_hole", "scratch", "foreign_object", "misplaced", "missing_part")

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SceneSpec:
    height: int = 96
    width: int = 128
    jitter_px: float = 2.0  # fixture tolerance: normal position spread
    gain: tuple[float, float] = (0.85, 1.15)  # lighting drift, multiplicative
    offset: tuple[float, float] = (-8.0, 8.0)  # and additive, grey levels
    noise: float = 4.0  # sensor noise, grey levels (std)
    belt: float = 60.0  # belt brightness
    plate: float = 185.0  # plate brightness
    hole: float = 35.0  # through-hole: the dark belt gap below shows


def _soft(dist: F32) -> F32:
    """Coverage of a pixel by a shape, from the signed distance to its edge (px)."""
    out: F32 = np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32)
    return out


class _Grid:
    def __init__(self, spec: SceneSpec) -> None:
        yy, xx = np.mgrid[0 : spec.height, 0 : spec.width].astype(np.float32)
        self.y, self.x = yy, xx
        self.s = min(spec.height / 96.0, spec.width / 128.0)  # shapes scale with the frame

    def rect(self, cx: float, cy: float, hw: float, hh: float) -> F32:
        d = np.maximum(np.abs(self.x - cx) - hw, np.abs(self.y - cy) - hh)
        return _soft(d)

    def disc(self, cx: float, cy: float, r: float) -> F32:
        return _soft(np.hypot(self.x - cx, self.y - cy) - r)

    def line(self, x0: float, y0: float, x1: float, y1: float, half_width: float) -> F32:
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((self.x - x0) * dx + (self.y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        return _soft(np.hypot(self.x - (x0 + t * dx), self.y - (y0 + t * dy)) - half_width)


def render(rng: np.random.Generator, spec: SceneSpec, defect: str | None = None) -> U8:
    """One grayscale frame; `defect` None for a good part, else one of DEFECTS."""
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r} (expected one of {DEFECTS})")
    g = _Grid(spec)
    s = g.s
    phase = rng.uniform(0, 2 * np.pi)
    img = spec.belt + 10.0 * np.sin(g.x * (2 * np.pi / (16 * s)) + phase).astype(np.float32)
    cx = spec.width / 2 + rng.uniform(-spec.jitter_px, spec.jitter_px) * s
    cy = spec.height / 2 + rng.uniform(-spec.jitter_px, spec.jitter_px) * s
    if defect == "misplaced":
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(10, 16) * s
        cx, cy = cx + dist * np.cos(ang), cy + dist * np.sin(ang)
    if defect != "missing_part":
        plate = g.rect(cx, cy, 38 * s, 22 * s)
        img = img * (1 - plate) + spec.plate * plate
        slot = g.rect(cx, cy - 14 * s, 6 * s, 4 * s)  # a notch: the part has an orientation
        img = img * (1 - slot) + spec.hole * slot
        keep: tuple[int, ...] = (0, 1)
        if defect == "missing_hole":
            keep = ((1,), (0,))[int(rng.integers(2))]
        for i in keep:
            h = g.disc(cx + (-22 + 44 * i) * s, cy + 4 * s, 7 * s)
            img = img * (1 - h) + spec.hole * h
        if defect == "scratch":
            a = rng.uniform(-0.6, 0.6)
            half = rng.uniform(20, 32) * s
            x0, y0 = cx - half * np.cos(a), cy - half * np.sin(a) + rng.uniform(-8, 8) * s
            x1, y1 = cx + half * np.cos(a), cy + half * np.sin(a) + rng.uniform(-8, 8) * s
            ln = g.line(x0, y0, x1, y1, 1.5 * s) * plate
            img = img * (1 - ln) + (spec.plate - 110) * ln
    if defect == "foreign_object":
        ox = cx + rng.uniform(-40, 40) * s
        oy = cy + rng.uniform(-22, 22) * s
        blob = g.disc(ox, oy, rng.uniform(6, 9) * s)
        level = 245.0 if rng.integers(2) else 15.0
        img = img * (1 - blob) + level * blob
    img = img * rng.uniform(*spec.gain) + rng.uniform(*spec.offset)
    img = img + rng.normal(0.0, spec.noise, img.shape)
    out: U8 = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def frames(
    seed: int,
    n: int,
    spec: SceneSpec | None = None,
    *,
    defect_rate: float = 0.0,
    defects: tuple[str, ...] = DEFECTS,
) -> Iterator[tuple[U8, str | None]]:
    """n frames and their labels (None = good part); each frame is defective with
    probability `defect_rate`, of a kind drawn from `defects`. Same seed, same frames."""
    spec = spec or SceneSpec()
    rng = np.random.default_rng(seed)
    for _ in range(n):
        kind = None
        if defect_rate > 0 and rng.random() < defect_rate:
            kind = defects[int(rng.integers(len(defects)))]
        yield render(rng, spec, kind), kind


def to_bgr(gray: U8) -> U8:
    """The 3-channel frame a camera or video file delivers (OpenCV's BGR order)."""
    out: U8 = np.repeat(gray[:, :, None], 3, axis=2)
    return out


SCALE_Y, SCALE_X = 3, 4  # model_samples renders at (3h, 4w): a 4:3 camera view


def model_samples(
    seed: int,
    n: int,
    height: int,
    width: int,
    *,
    defect_rate: float = 0.0,
    defects: tuple[str, ...] = DEFECTS,
) -> tuple[F32, list[str | None]]:
    """(n, height*width) float32 samples in [0, 1], as CameraSource delivers them for a
    height x width model, and each frame's label."""
    spec = SceneSpec(height=height * SCALE_Y, width=width * SCALE_X)
    out = np.empty((n, height * width), np.float32)
    labels: list[str | None] = []
    it = frames(seed, n, spec, defect_rate=defect_rate, defects=defects)
    for i, (img, kind) in enumerate(it):
        blocks = img.reshape(height, SCALE_Y, width, SCALE_X).mean(axis=(1, 3))
        out[i] = np.rint(blocks).reshape(-1)  # a uint8 resize rounds to grey levels
        labels.append(kind)
    out *= np.float32(1.0 / 255.0)
    return out, labels
