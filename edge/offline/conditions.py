"""Named, seeded line conditions: what another line's camera does to the same part.

Each condition turns a dataset-framed crop into the crop a line under that condition
would deliver: another belt behind the part, lighting gain and gamma on the part, focus
both ways, a motion streak, JPEG re-compression, a crop that is framed a little too
tight, too loose or off-centre. Applied alike to validation (where the threshold and
the model are chosen) and test (where they are only reported), by the trainer
(`edge-train fit`) and by `edge-inspect --replay --conditions`. Pure numpy/OpenCV and
deterministic for a seed, so a figure can be reproduced from its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edge.offline.perturb import blur, sharpen
from edge.vision.partview import Circle, backdrop_grey, disk_mask, drawing_rim


def _belt(shape: tuple[int, int], grey: float, texture: str, rng: np.random.Generator) -> np.ndarray:
    """A belt of mean `grey`: plain, grainy (blurred noise) or woven (a crossed sine weave)."""
    h, w = shape
    base = np.full((h, w), grey, np.float32)
    if texture == "grain":
        base += cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.0) * 30
    elif texture == "woven":
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        phi = rng.uniform(0, np.pi)
        a = (xs * np.cos(phi) + ys * np.sin(phi)) * (2 * np.pi / 8)
        b = (-xs * np.sin(phi) + ys * np.cos(phi)) * (2 * np.pi / 8)
        base += np.sin(a) * np.sin(b) * 18
    return base


# What counts as backdrop outside the rim: pixels within LIKE_TOL (fading out over LIKE_SOFT)
# grey levels of the backdrop's smooth surface (a Gaussian of BACKDROP_SIGMA over the image with
# the disk filled by the backdrop grey). The surface follows the plate's shading and the part's
# soft shadow, so on the dataset's plate ~100% of the far backdrop is replaced; a fixed grey
# (the rule before 2026-12-03) replaced only ~40% of it. The rim's outline, flash and burrs
# stand out of the surface and stay. trainer.augment applies the same rule in TensorFlow.
BACKDROP_SIGMA = 6.0
BACKDROP_KSIZE = 37  # +-3 sigma, explicit so that OpenCV and TensorFlow use the same kernel
LIKE_TOL = 12.0
LIKE_SOFT = 24.0


def backdrop_surface(gray: np.ndarray, circle: Circle, bg: float) -> np.ndarray:
    """The backdrop's smooth grey surface (float32), the part's disk filled by `bg` first."""
    f = gray.astype(np.float32)
    filled = np.where(disk_mask(gray.shape, circle.cx, circle.cy, circle.r), np.float32(bg), f)
    k = BACKDROP_KSIZE
    return cv2.GaussianBlur(filled, (k, k), BACKDROP_SIGMA, borderType=cv2.BORDER_REFLECT_101)


def like_backdrop(residual: np.ndarray) -> np.ndarray:
    """Weight 0..1 of a pixel being backdrop, from its distance to the backdrop surface."""
    return 1.0 - np.clip((np.abs(residual) - LIKE_TOL) / LIKE_SOFT, 0.0, 1.0)


def on_backdrop(gray: np.ndarray, grey: float, texture: str = "plain", seed: int = 0,
                circle: Circle | None = None) -> np.ndarray:
    """The same part on another belt: outside its rim, pixels like the old backdrop become the new
    belt (keeping their fine texture); the rim's outline, flash and burrs stay (as trainer.augment)."""
    c = circle if circle is not None else drawing_rim(gray)
    f = gray.astype(np.float32)
    residual = f - backdrop_surface(gray, c, backdrop_grey(gray, c))
    like = like_backdrop(residual)
    belt = _belt(gray.shape, grey, texture, np.random.default_rng(seed)) + residual
    outside = ~disk_mask(gray.shape, c.cx, c.cy, c.r)
    out = np.where(outside, like * belt + (1 - like) * f, f)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def lighting(gray: np.ndarray, gain: float = 1.0, gamma: float = 1.0) -> np.ndarray:
    f = 255.0 * np.power(gray.astype(np.float32) / 255.0, gamma) * gain
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def motion(gray: np.ndarray, length: float, angle_deg: float) -> np.ndarray:
    """A streak of `length` pixels at `angle_deg` (a part moving during the exposure)."""
    k = int(np.ceil(length)) | 1
    kern = np.zeros((k, k), np.float32)
    c = (k - 1) / 2
    t = np.radians(angle_deg)
    for s in np.linspace(-length / 2, length / 2, 4 * k):
        x, y = c + s * np.cos(t), c + s * np.sin(t)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            xi, yi = x0 + dx, y0 + dy
            if 0 <= xi < k and 0 <= yi < k:
                kern[yi, xi] += max(0.0, 1 - abs(x - xi)) * max(0.0, 1 - abs(y - yi))
    kern /= kern.sum()
    return cv2.filter2D(gray, -1, kern, borderType=cv2.BORDER_REFLECT)


def jpeg(gray: np.ndarray, quality: int) -> np.ndarray:
    ok, enc = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 gray
        raise RuntimeError("JPEG encode failed")
    return cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE)


def reframe(gray: np.ndarray, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """The crop a locator that misjudged size by `scale` and centre by (dx, dy) of the side would give."""
    h, w = gray.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0.0, scale)
    m[:, 2] += (dx * w, dy * h)
    return cv2.warpAffine(gray, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


Condition = Callable[[np.ndarray, int], np.ndarray]  # (crop, per-image seed) -> crop


@dataclass(frozen=True)
class Named:
    name: str
    fn: Condition
    kind: str  # backdrop | lighting | focus | motion | jpeg | framing


def _seeded_angle(seed: int) -> float:
    return float(np.random.default_rng(seed).uniform(0, 180))


LINE_CONDITIONS: tuple[Named, ...] = (
    Named("belt_dark_70", lambda g, s: on_backdrop(g, 70), "backdrop"),
    Named("belt_light_220", lambda g, s: on_backdrop(g, 220), "backdrop"),
    Named("belt_woven_125", lambda g, s: on_backdrop(g, 125, "woven", s), "backdrop"),
    Named("gain_0.75", lambda g, s: lighting(g, gain=0.75), "lighting"),
    Named("gain_1.25", lambda g, s: lighting(g, gain=1.25), "lighting"),
    Named("gamma_0.75", lambda g, s: lighting(g, gamma=0.75), "lighting"),
    Named("gamma_1.35", lambda g, s: lighting(g, gamma=1.35), "lighting"),
    Named("blur_1.0", lambda g, s: blur(g, 1.0), "focus"),
    Named("sharpen_1.0", lambda g, s: sharpen(g, 1.0), "focus"),
    Named("motion_5px", lambda g, s: motion(g, 5.0, _seeded_angle(s)), "motion"),
    Named("jpeg_q50", lambda g, s: jpeg(g, 50), "jpeg"),
    Named("scale_0.92", lambda g, s: reframe(g, 0.92), "framing"),
    Named("scale_1.08", lambda g, s: reframe(g, 1.08), "framing"),
    Named("offset_0.04", lambda g, s: reframe(g, 1.0, 0.04 * np.cos(_seeded_angle(s)), 0.04 * np.sin(_seeded_angle(s))),
          "framing"),
)

# The same parts on belts from dark to light, plain and textured: p_defect must not follow the belt.
BACKDROPS: tuple[Named, ...] = (
    Named("grey_60", lambda g, s: on_backdrop(g, 60), "backdrop"),
    Named("grey_100", lambda g, s: on_backdrop(g, 100), "backdrop"),
    Named("grey_140", lambda g, s: on_backdrop(g, 140), "backdrop"),
    Named("grey_180", lambda g, s: on_backdrop(g, 180), "backdrop"),
    Named("grey_230", lambda g, s: on_backdrop(g, 230), "backdrop"),
    Named("grain_120", lambda g, s: on_backdrop(g, 120, "grain", s), "backdrop"),
    Named("woven_125", lambda g, s: on_backdrop(g, 125, "woven", s), "backdrop"),
)

BY_NAME: dict[str, Named] = {c.name: c for c in (*LINE_CONDITIONS, *BACKDROPS)}


def apply(images: np.ndarray, condition: Named, seed: int = 0) -> np.ndarray:
    """The condition applied to every (N, H, W) uint8 crop; image i gets seed + i."""
    if not len(images):
        return images.copy()
    return np.stack([condition.fn(img, seed + i) for i, img in enumerate(images)])
