"""A simulated production line with known ground truth.

Parts (dataset images or synthetic ones) are composited onto a rendered conveyor belt at
known centres, rim diameters and rotations, and moved across the view at constant speed.
Tests use it to measure the locator and tracker against the truth; the daemon's embedded
demo uses it when no camera is attached. Deterministic for a given seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from edge.vision.locate import (
    DATASET_CONFIG,
    RIM_CENTRE_OFFSET,
    RIM_DIAMETER_FRACTION,
    find_parts,
)
from edge.vision.preprocess import to_gray_u8

log = logging.getLogger(__name__)

FRAME_SIZE = (1280, 720)  # (width, height) of the default line camera
BELT_LEVEL = 70.0  # dark rubber belt: the bright metal rim stands out against it
# The dataset's light backdrop: median grey of the corners of casting_data test images
# (every 20th of the 715: 5%..95% = 149..189, median 162). The demo line uses a belt of
# this level and pastes each part with its surrounding backdrop (DEMO_CONTEXT), so the
# crops look like the images the model was trained on.
DATASET_BACKDROP_LEVEL = 162.0
DEMO_CONTEXT = 1.2  # pasted radius / rim radius; the crop's inscribed circle is 1.23
FOURCC = {".avi": "MJPG", ".mp4": "mp4v"}  # both verified to write and read back here


@dataclass(frozen=True)
class Rim:
    """Outer rim of a part in its own image: centre and radius in pixels."""

    cx: float
    cy: float
    radius: float


def belt(
    width: int = FRAME_SIZE[0], height: int = FRAME_SIZE[1], seed: int = 0, level: float = BELT_LEVEL
) -> np.ndarray:
    """A conveyor belt: dark grey, lengthwise stripes, grain, mild vignetting."""
    rng = np.random.default_rng(seed)
    rows = cv2.GaussianBlur(rng.normal(0, 4.0, (height, 1)).astype(np.float32), (1, 0), sigmaX=0.1, sigmaY=2.0)
    grain = cv2.GaussianBlur(rng.normal(0, 5.0, (height, width)).astype(np.float32), (0, 0), 0.8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2
    img = level * (1.0 - 0.25 * r2) + rows + grain
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_part(seed: int, size: int = 300, defect: bool = False) -> np.ndarray:
    """A drawn impeller framed like the dataset, for demos and tests without the data.

    Light backdrop; bright shaded metal rim with a dark outline, filling
    RIM_DIAMETER_FRACTION of the side; dark vane ring; bright hub. A defective part has
    a dark pit on the rim face. Not a substitute for real images when judging the model.
    """
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 172.0 + 10.0 * (xx - c) / size + rng.normal(0, 3.0, (size, size))
    rad = RIM_DIAMETER_FRACTION * size / 2

    def disc(r: float, value: float | np.ndarray) -> None:
        mask = np.clip(r + 0.5 - np.hypot(xx - c, yy - c), 0, 1)  # anti-aliased edge
        img[:] = mask * value + (1 - mask) * img

    light = rng.uniform(0, 2 * np.pi)
    shade = 190.0 + 25.0 * np.cos(np.arctan2(yy - c, xx - c) - light)  # metal lit from one side
    disc(rad + 1.5, 55.0)  # dark outline
    disc(rad, shade)
    disc(0.74 * rad, 95.0)
    disc(0.72 * rad, shade - 10)
    disc(0.60 * rad, 32.0)  # vane ring
    disc(0.30 * rad, 200.0)  # hub
    disc(0.20 * rad, 120.0)  # bore
    if defect:
        a, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.78, 0.92) * rad
        x, y = c + r * np.cos(a), c + r * np.sin(a)
        img[np.hypot(xx - x, yy - y) <= rng.uniform(0.02, 0.04) * size] = 25.0
    img += rng.normal(0, 4.0, (size, size))
    return np.clip(cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.7), 0, 255).astype(np.uint8)


def part_rim(part: np.ndarray) -> Rim:
    """Locate the rim in a part image framed like the dataset.

    Dataset parts are brighter than their outline; a synthetic part darker than its
    backdrop is found with either edge polarity; failing both, the nominal framing.
    """
    gray = to_gray_u8(part)
    h, w = gray.shape
    k = min(h, w) / 300
    base = replace(
        DATASET_CONFIG,
        min_diameter=DATASET_CONFIG.min_diameter * k,
        max_diameter=DATASET_CONFIG.max_diameter * k,
        downscale=max(1, round(DATASET_CONFIG.downscale * k)),
    )
    for polarity in (base.rim_polarity, 0):
        boxes = find_parts(gray, replace(base, rim_polarity=polarity))
        if boxes:
            b = boxes[0]
            return Rim(b.cx, b.cy, b.radius)
    log.warning("no rim found in part image; assuming the nominal dataset framing", extra={"shape": gray.shape})
    cx, cy = (w - 1) / 2 + RIM_CENTRE_OFFSET[0] * w, (h - 1) / 2 + RIM_CENTRE_OFFSET[1] * h
    return Rim(cx, cy, RIM_DIAMETER_FRACTION * min(h, w) / 2)


def place_part(
    background: np.ndarray,
    part: np.ndarray,
    cx: float,
    cy: float,
    diameter_px: float,
    angle_deg: float,
    rim: Rim | None = None,
    context: float = 1.0,
) -> np.ndarray:
    """A copy of `background` with `part` composited so its rim is centred at (cx, cy)
    with diameter `diameter_px`, rotated by `angle_deg` (counter-clockwise).

    Only the disc inside the rim is pasted, through a mask feathered across the rim's
    edge, so neither the part image's square nor its light backdrop shows. `rim` is the
    rim in the part image (located with `part_rim` when not given). With `context` > 1
    the disc reaches that many rim radii, fading out from just past the rim to that radius,
    so the part's own backdrop and shadow come along without a hard seam.
    """
    frame = to_gray_u8(background).copy()
    src = to_gray_u8(part)
    rim = rim or part_rim(src)
    s = diameter_px / (2 * rim.radius)
    rcx, rcy, rr = rim.cx, rim.cy, rim.radius
    if s < 1:  # area-average first: warpAffine's bilinear sampling would alias
        nw, nh = max(1, round(src.shape[1] * s)), max(1, round(src.shape[0] * s))
        sx, sy = nw / src.shape[1], nh / src.shape[0]
        src = cv2.resize(src, (nw, nh), interpolation=cv2.INTER_AREA)
        rcx, rcy, rr = (rcx + 0.5) * sx - 0.5, (rcy + 0.5) * sy - 0.5, rr * (sx + sy) / 2
        s = diameter_px / (2 * rr)
    # Alpha: 1 inside the rim, 0 outside, a 2-pixel ramp centred half a pixel past it.
    hh, ww = src.shape
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    dist = np.sqrt((xx - rcx) ** 2 + (yy - rcy) ** 2)
    if context > 1.0:
        outer = rr * context
        ramp = max(2.0, (outer - rr) * 0.85)
        alpha = np.clip((outer - dist) / ramp, 0, 1).astype(np.float32)
    else:
        alpha = np.clip((rr + 0.5 - dist) / 2.0 + 0.5, 0, 1).astype(np.float32)
    # Destination window: the disc's bounding square, clipped to the frame.
    R = diameter_px / 2 * max(1.0, context) + 3
    H, W = frame.shape
    x0, y0 = max(0, math.floor(cx - R)), max(0, math.floor(cy - R))
    x1, y1 = min(W, math.ceil(cx + R) + 1), min(H, math.ceil(cy + R) + 1)
    if x0 >= x1 or y0 >= y1:
        return frame
    m = cv2.getRotationMatrix2D((rcx, rcy), angle_deg, s)
    m[0, 2] += cx - rcx - x0
    m[1, 2] += cy - rcy - y0
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(src, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(alpha, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.clip(a * warped + (1 - a) * roi + 0.5, 0, 255).astype(np.uint8)
    return frame


def camera(
    frame: np.ndarray, gain: float = 1.0, blur_sigma: float = 0.0, noise: np.ndarray | None = None
) -> np.ndarray:
    """What the camera adds: exposure gain, defocus blur, then sensor noise (a float field)."""
    out = frame.astype(np.float32) * gain
    if blur_sigma > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), blur_sigma)
    if noise is not None:
        out += noise
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PartTruth:
    index: int  # position of the part in the line's part list
    label: str | None
    cx: float
    cy: float
    diameter: float  # rim diameter in frame pixels
    angle: float
    fully_in_view: bool


@dataclass(frozen=True)
class FrameTruth:
    frame_index: int
    t: float  # seconds since the first frame
    parts: tuple[PartTruth, ...]


class SimulatedLine:
    """Parts moving left to right across the camera at constant speed.

    Part i's centre is at x = -max_diameter/2 - 1 - i*spacing + k*speed in frame k, so
    every part enters from the left unseen and the run ends once the last part has left.
    Each part gets its own rotation (and optional diameter / height jitter) from `seed`.
    Iterating yields (frame, FrameTruth); every iteration renders the same frames.
    """

    def __init__(
        self,
        parts: Sequence[np.ndarray],
        labels: Sequence[str | None],
        *,
        width: int = FRAME_SIZE[0],
        height: int = FRAME_SIZE[1],
        fps: float = 10.0,  # only for FrameTruth.t
        speed_px: float = 40.0,  # belt speed, pixels per frame
        diameter_px: float = 260.0,  # rim diameter in the frame
        spacing_px: float | None = None,  # centre to centre; default 1.5 diameters
        diameter_jitter: float = 0.0,  # relative, uniform +-
        y_jitter: float = 0.0,  # pixels, uniform +-
        noise_sigma: float = 2.0,
        belt_level: float = BELT_LEVEL,
        context: float = 1.0,  # see place_part
        seed: int = 0,
    ) -> None:
        if len(parts) != len(labels):
            raise ValueError("parts and labels differ in length")
        if speed_px <= 0 or fps <= 0 or diameter_px <= 0:
            raise ValueError("speed_px, fps and diameter_px must be positive")
        self.width, self.height, self.fps, self.speed = width, height, fps, float(speed_px)
        self.parts = [to_gray_u8(p) for p in parts]
        self.labels = list(labels)
        self._rims: dict[int, Rim] = {}  # located on first use: a long demo list starts at once
        rng = np.random.default_rng(seed)
        n = len(self.parts)
        self.diameters = diameter_px * (1 + rng.uniform(-diameter_jitter, diameter_jitter, n))
        self.angles = rng.uniform(0, 360, n)
        self.ys = height / 2 + rng.uniform(-y_jitter, y_jitter, n)
        self.spacing = float(spacing_px) if spacing_px is not None else 1.5 * diameter_px
        self.x_start = -float(self.diameters.max()) / 2 - 1
        self.context = float(context)
        self.background = belt(width, height, seed, level=belt_level)
        # A few fixed sensor-noise fields, cycled: cheap and deterministic.
        n_fields = 3 if noise_sigma > 0 else 0
        self.noise = [rng.normal(0, noise_sigma, (height, width)).astype(np.float32) for _ in range(n_fields)]
        # until the last part's left edge is past the right border
        travel = (width - 1) + float(self.diameters.max()) + 1 + (n - 1) * self.spacing
        self.n_frames = int(math.ceil(travel / self.speed)) + 1 if n else 0

    def __len__(self) -> int:
        return self.n_frames

    def rim(self, i: int) -> Rim:
        """Rim of part i in its own image (located once, then cached)."""
        if i not in self._rims:
            self._rims[i] = part_rim(self.parts[i])
        return self._rims[i]

    def truth(self, k: int) -> FrameTruth:
        """Which parts are (partly) in view in frame k, and where."""
        parts = []
        for i in range(len(self.parts)):
            x = self.x_start - i * self.spacing + k * self.speed
            r = self.diameters[i] / 2
            y = float(self.ys[i])
            if x + r < 0 or x - r > self.width - 1:
                continue
            full = x - r >= 0 and x + r <= self.width - 1 and y - r >= 0 and y + r <= self.height - 1
            d, a = float(self.diameters[i]), float(self.angles[i])
            parts.append(PartTruth(i, self.labels[i], float(x), y, d, a, bool(full)))
        return FrameTruth(k, k / self.fps, tuple(parts))

    def render(self, k: int) -> tuple[np.ndarray, FrameTruth]:
        truth = self.truth(k)
        frame = self.background
        for p in truth.parts:
            frame = place_part(frame, self.parts[p.index], p.cx, p.cy, p.diameter, p.angle, self.rim(p.index),
                               self.context)
        noise = self.noise[k % len(self.noise)] if self.noise else None
        return camera(frame, noise=noise), truth

    def __iter__(self) -> Iterator[tuple[np.ndarray, FrameTruth]]:
        for k in range(self.n_frames):
            yield self.render(k)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Write frames (gray or BGR uint8) to .avi (MJPG) or .mp4 (mp4v); returns the count."""
    path = Path(path)
    fourcc = FOURCC.get(path.suffix.lower())
    if fourcc is None:
        raise ValueError(f"unsupported video suffix {path.suffix!r} (use {', '.join(FOURCC)})")
    writer: cv2.VideoWriter | None = None
    count = h = w = 0
    try:
        for f in frames:
            bgr = cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else f
            if writer is not None and bgr.shape[:2] != (h, w):
                raise ValueError(f"frame {count} is {bgr.shape[1]}x{bgr.shape[0]}, the video {w}x{h}")
            if writer is None:
                h, w = bgr.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write {fourcc} video to {path}")
            writer.write(bgr)
            count += 1
    finally:
        if writer is not None:
            writer.release()
    log.info("video written", extra={"path": str(path), "frames": count, "fourcc": fourcc})
    return count
