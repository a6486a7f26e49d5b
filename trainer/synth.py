"""Synthetic pinholes: a share of good fit images gets one small dark pit on its flange and
becomes a defect.

Why: every validation escape of the shipped bundle, and the threshold of every run since
November, comes from two pinholes (`cast_def_0_4073`, `_2838`): pits of 2-3 px about 15% darker
than the metal around them, often with a brighter lip where the light catches the far edge
(measured on `_4073`: 195 -> 163 grey, a +15 highlight beside it). The training folder holds
few parts like them, so the network learns them weakly. A pit drawn on a good part's own metal
is a defect by definition, with every other pixel of that part known to be good: the label is
exact as long as the pit can be seen. So it is drawn after the framing, focus and motion of
trainer.augment, in output pixels (its place on the flange carried through the image's affine),
and before sensor noise and JPEG: a pit drawn before a 7 px motion streak is gone while its
label still says defect. Neither way beat the shipped model: both runs learnt to doubt every
good part more than they learnt the pits (docs/training.md, the `line-pinhole` runs;
bench/pit_detection.py measures what a model catches). An option, not the default.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:  # the augmentation imports this module: keep the edge's runtime out of it
    from edge.inference.judge import Judge
    from edge.vision.partview import Circle

# Where on the part: radius as a share of the rim's, i.e. the flange between the dark
# impeller opening (about 0.6 of the rim) and the rim itself.
RADIUS = (0.62, 0.95)
SIGMA = (0.6, 1.5)  # the pit's Gaussian radius in pixels (2-4 px across at half depth)
DEPTH = (0.15, 0.45)  # darkening at its centre, as a share of the metal's grey (`_4073`: 16%)
LIP = (0.0, 0.6)  # the bright lip's height as a share of the depth


def choose(labels: tf.Tensor, share: float, seed: tf.Tensor) -> tf.Tensor:
    """(B,) bool: the good images (label < 0.5) that get a pit, `share` of them on average."""
    n = tf.shape(labels)[0]
    draw = tf.random.stateless_uniform([n], seed=tf.cast(seed, tf.int64) + 67)
    return (labels[:, 0] < 0.5) & (draw < share)


def as_defects(labels: tf.Tensor, chosen: tf.Tensor) -> tf.Tensor:
    return tf.where(chosen[:, None], tf.ones_like(labels), labels)


def _to_output(sx: tf.Tensor, sy: tf.Tensor, transforms: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Source pixel -> output pixel: the inverse of trainer.augment's output -> source affine."""
    a00, a01, a02, a10, a11, a12 = (transforms[:, i, None, None, None] for i in range(6))
    det = a00 * a11 - a01 * a10
    dx, dy = sx - a02, sy - a12
    return (a11 * dx - a01 * dy) / det, (a00 * dy - a10 * dx) / det


def draw_pits(images: tf.Tensor, chosen: tf.Tensor, circles: tf.Tensor, transforms: tf.Tensor,
              seed: tf.Tensor, sigma_range: tuple[float, float] = SIGMA,
              depth_range: tuple[float, float] = DEPTH) -> tf.Tensor:
    """(B, H, W, 1) float images in output pixels -> the chosen ones with one pit each on the
    flange of their rim (`circles` in source pixels, `transforms` output -> source per image).
    Equal ends of a range fix that property (bench/pit_detection.py)."""
    n = tf.shape(images)[0]
    h, w = int(images.shape[1]), int(images.shape[2])
    seed = tf.cast(seed, tf.int64)

    def u(i: int, lo: float, hi: float) -> tf.Tensor:
        return tf.random.stateless_uniform([n, 1, 1, 1], seed=seed + 60 + i, minval=lo, maxval=hi)

    cx, cy, r = (tf.cast(circles[:, i, None, None, None], tf.float32) for i in range(3))
    at = u(1, 0.0, 2 * math.pi)
    rho = u(2, *RADIUS) * r
    px, py = _to_output(cx + rho * tf.cos(at), cy + rho * tf.sin(at), tf.cast(transforms, tf.float32))
    sigma, depth = u(3, *sigma_range), u(4, *depth_range)
    toward = u(5, 0.0, 2 * math.pi)
    lx, ly = px + 1.6 * sigma * tf.cos(toward), py + 1.6 * sigma * tf.sin(toward)
    ys, xs = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    xs, ys = xs[None, ..., None], ys[None, ..., None]
    pit = tf.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma ** 2))
    lip = tf.exp(-((xs - lx) ** 2 + (ys - ly) ** 2) / (2 * sigma ** 2)) * u(6, *LIP)
    pitted = tf.clip_by_value(images * (1.0 - depth * pit + depth * lip), 0.0, 255.0)
    return tf.where(chosen[:, None, None, None], pitted, images)


# The detection-limit grid fit reports (bench/pit_detection.py takes any): the two validation
# pinholes are about 0.15 deep at sigma ~1, below every cell; these show how far a model is.
REPORT_DEPTHS = (0.3, 0.45, 0.6)
REPORT_SIGMAS = (1.0, 1.5, 2.2)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)  # output pixel = source pixel


def pitted(images: np.ndarray, rims: list[Circle], depth: float, sigma: float, seed: int = 0) -> np.ndarray:
    """uint8 (N, H, W) images -> copies with one pit of this depth and sigma on each flange."""
    n = len(images)
    circles = np.array([[c.cx, c.cy, c.r, 0.0] for c in rims], np.float32).reshape(n, 4)
    out = draw_pits(tf.constant(images[..., None], tf.float32), tf.ones([n], tf.bool), tf.constant(circles),
                    tf.constant(np.tile(np.array(IDENTITY, np.float32), (n, 1))), tf.constant([seed, 1], tf.int64),
                    sigma_range=(sigma, sigma), depth_range=(depth, depth))
    return np.clip(np.round(out.numpy()[..., 0]), 0, 255).astype(np.uint8)


def detection(judge: Judge, good: np.ndarray, rims: list[Circle], depths: tuple[float, ...] = REPORT_DEPTHS,
              sigmas: tuple[float, ...] = REPORT_SIGMAS, seed: int = 0) -> dict[str, Any]:
    """Share of good parts not accepted (a reject or a fault), clean and with one pit per
    (depth, sigma): the lone pinholes a bundle catches. The judge finds each rim itself."""

    def rejected(images: np.ndarray) -> float:
        return round(float(np.mean([j.decision != "accept" for j in judge.judge_all(images)])), 4)

    return {"parts": len(good), "seed": seed, "clean_rejected": rejected(good),
            "rejected": {f"{d:g}": {f"{s:g}": rejected(pitted(good, rims, d, s, seed)) for s in sigmas}
                         for d in depths}}
