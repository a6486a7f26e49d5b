"""Seeded perturbations of a part crop, as a line camera produces them.

Used to measure robustness (trainer) and to render simulated lines: any rotation,
scale +-10%, offset +-5% of the crop, exposure +-15%, mild blur, JPEG re-compression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PerturbConfig:
    rotation: float = 180.0  # max |angle| in degrees
    scale: float = 0.10
    offset: float = 0.05  # fraction of the crop size
    exposure: float = 0.15
    blur_sigma: float = 1.0  # max Gaussian sigma in pixels
    jpeg_quality: tuple[int, int] = (70, 95)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def perturb(gray: np.ndarray, rng: np.random.Generator, cfg: PerturbConfig = PerturbConfig()) -> np.ndarray:
    h, w = gray.shape
    angle = rng.uniform(-cfg.rotation, cfg.rotation)
    scale = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    dx, dy = rng.uniform(-cfg.offset, cfg.offset, size=2) * (w, h)
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    m[:, 2] += (dx, dy)
    out = cv2.warpAffine(gray, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    gain = rng.uniform(1 - cfg.exposure, 1 + cfg.exposure)
    out = np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    sigma = rng.uniform(0, cfg.blur_sigma)
    if sigma > 0.05:
        out = blur(out, sigma)
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 gray
        raise RuntimeError("JPEG encode failed")
    return cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE)


def blur(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Focus drifting off: a Gaussian blur of `sigma` pixels."""
    return cv2.GaussianBlur(gray, (0, 0), sigma)


def sharpen(gray: np.ndarray, amount: float, sigma: float = 1.0) -> np.ndarray:
    """A crisper lens or in-camera sharpening: an unsharp mask of `amount` at `sigma` pixels."""
    f = gray.astype(np.float32)
    out = f + amount * (f - cv2.GaussianBlur(f, (0, 0), sigma))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# Fixed focus changes the trainer reports the int8 model under (metrics.json: "focus"):
# the shipped model of 2026-11 read crispness as defect evidence, which no other figure showed.
FOCUS_CHANGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "blur_0.5": lambda g: blur(g, 0.5),
    "blur_1.0": lambda g: blur(g, 1.0),
    "sharpen_0.5": lambda g: sharpen(g, 0.5),
    "sharpen_1.0": lambda g: sharpen(g, 1.0),
}


def refocus_all(images: np.ndarray, change: str) -> np.ndarray:
    """Apply one of FOCUS_CHANGES to every image of a (N, H, W) uint8 stack."""
    fn = FOCUS_CHANGES[change]
    return np.stack([fn(img) for img in images]) if len(images) else images.copy()


def perturb_all(images: np.ndarray, seed: int, cfg: PerturbConfig = PerturbConfig()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([perturb(img, rng, cfg) for img in images]) if len(images) else images.copy()
