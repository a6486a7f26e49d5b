"""The part's tones mapped onto a reference: a lamp's gain or a camera's gamma barely moves the input.

A line's lamp, exposure and camera curve change every grey level of the casting by one
monotonic curve. Ranks survive any such curve, so a part-only bundle may declare
`input.part_only.tone`: 257 grey levels, the average quantile function of its training
parts inside their rims. Each crop's levels are then mapped by their mid-rank among the
pixels inside its own rim onto that reference (histogram matching), before the mask and the
model. A typical part maps onto itself almost unchanged; the same part under another gain
or gamma maps onto nearly the same pixels (exactly the same for any gain >= 1 without
clipping). What a camera clipped stays lost: a saturated block is one tied level, mapped to one
grey. Only pixels inside the rim set the map, so the belt in the margin cannot shift it.

Pure numpy/OpenCV; edge.vision.partview applies it inside the rim it finds, and the trainer applies
the same function to its augmented batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

TONES = ("none", "match")  # edge-train fit --tone: levels as the camera gives them, or matched
TONE_POINTS = 257  # the reference's quantiles at k/256, k = 0..256
MIN_PIXELS = 256  # fewer pixels inside a rim than this: no map (the crop is passed unchanged)
_LEVELS = np.arange(TONE_POINTS, dtype=np.float64) / (TONE_POINTS - 1)


def tone_map(gray: np.ndarray, region: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """uint8 `gray` with every level moved to the reference's grey at that level's mid-rank among
    the `region` pixels (bool, same shape); unchanged where the region is too small to rank."""
    values = gray[region]
    if values.size < MIN_PIXELS:
        return gray
    counts = np.bincount(values, minlength=256).astype(np.float64)
    mid_rank = (np.cumsum(counts) - counts / 2) / values.size
    lut = np.interp(mid_rank, _LEVELS, reference)
    return cv2.LUT(gray, np.clip(np.rint(lut), 0, 255).astype(np.uint8))  # lut[gray], twice as fast


def tone_map_batch(images: np.ndarray, regions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """tone_map on each of a float (B, H, W, 1) batch, rounded to uint8 as a camera's pixels are
    (the trainer's augmented images); float32 back, same shape."""
    u8 = np.clip(np.rint(images[..., 0]), 0, 255).astype(np.uint8)
    out = [tone_map(img, r[..., 0], reference) for img, r in zip(u8, regions, strict=True)]
    return np.stack(out)[..., None].astype(np.float32)


def quantiles(gray: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The region's grey at each of the reference's levels (its quantile function)."""
    return np.quantile(gray[region].astype(np.float64), _LEVELS)


def reference_tone(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The mean quantile function of (image, region) pairs, taken one at a time (those with too few
    pixels left out): the tones a bundle's model is trained to see."""
    rows = [quantiles(img, r) for img, r in parts if r.sum() >= MIN_PIXELS]
    if not rows:
        raise ValueError("no image with a part region to take the reference tones from")
    return np.round(np.mean(rows, axis=0), 3)


def tone_from_meta(value: Any) -> np.ndarray:
    """`input.part_only.tone` checked: 257 non-decreasing grey levels in 0..255; ValueError names it."""
    where = "input.part_only.tone"
    if not isinstance(value, list) or len(value) != TONE_POINTS:
        n = len(value) if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{where}: expected a list of {TONE_POINTS} grey levels, got {n}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int | float)]
    if bad:
        raise ValueError(f"{where}: {bad[0]!r} is not a number")
    ref = np.asarray(value, np.float64)
    if not np.all(np.isfinite(ref)) or ref.min() < 0 or ref.max() > 255:
        raise ValueError(f"{where}: grey levels must lie in 0..255 (got {ref.min()}..{ref.max()})")
    if np.any(np.diff(ref) < 0):
        k = int(np.argmax(np.diff(ref) < 0))
        raise ValueError(f"{where}: must not decrease (entry {k + 1}: {value[k + 1]} after {value[k]})")
    return ref
