"""Synthetic pinholes: a share of good fit images gets one small dark pit on its flange and
becomes a defect.

Why: every run since November accepts, or sets its threshold by, the same two validation
pinholes (`cast_def_0_4073`, `_2838`): pits of 2-3 px about 15% darker than the metal around
them, often with a brighter lip where the light catches the far edge (measured on `_4073`:
195 -> 163 grey, a +15 highlight beside it). The training folder holds few parts like them,
so the network learns them weakly. A pit drawn on a good part's own metal is a defect by
definition, with every other pixel of that part known to be good: the label is exact, and
the pit goes through the same framing, focus, lighting and JPEG augmentation afterwards as
a real one. Drawn in source coordinates, before trainer.augment, from each image's rim.
"""

from __future__ import annotations

import math

import tensorflow as tf

# Where on the part: radius as a share of the rim's, i.e. the flange between the dark
# impeller opening (about 0.6 of the rim) and the rim itself.
RADIUS = (0.62, 0.95)
SIGMA = (0.6, 1.5)  # the pit's Gaussian radius in pixels (2-4 px across at half depth)
DEPTH = (0.10, 0.40)  # darkening at its centre, as a share of the metal's grey
LIP = (0.0, 0.6)  # the bright lip's height as a share of the depth


def add_pinholes(images: tf.Tensor, labels: tf.Tensor, circles: tf.Tensor, share: float,
                 seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, H, W, 1) images, (B, 1) labels (1 = defect), (B, 4) rims -> the same with `share` of
    the good images pitted and labelled defect. Stateless: a function of `seed` alone."""
    n = tf.shape(images)[0]
    h, w = int(images.shape[1]), int(images.shape[2])
    x = tf.cast(images, tf.float32)
    seed = tf.cast(seed, tf.int64)

    def u(i: int, lo: float, hi: float) -> tf.Tensor:
        return tf.random.stateless_uniform([n, 1, 1, 1], seed=seed + 60 + i, minval=lo, maxval=hi)

    cx, cy, r = (tf.cast(circles[:, i, None, None, None], tf.float32) for i in range(3))
    at = u(1, 0.0, 2 * math.pi)
    rho = u(2, *RADIUS) * r
    px, py = cx + rho * tf.cos(at), cy + rho * tf.sin(at)
    sigma, depth = u(3, *SIGMA), u(4, *DEPTH)
    toward = u(5, 0.0, 2 * math.pi)
    lx, ly = px + 1.6 * sigma * tf.cos(toward), py + 1.6 * sigma * tf.sin(toward)
    ys, xs = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    xs, ys = xs[None, ..., None], ys[None, ..., None]
    pit = tf.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma ** 2))
    lip = tf.exp(-((xs - lx) ** 2 + (ys - ly) ** 2) / (2 * sigma ** 2)) * u(6, *LIP)
    pitted = tf.clip_by_value(x * (1.0 - depth * pit + depth * lip), 0.0, 255.0)
    good = labels[:, 0] < 0.5
    chosen = good & (tf.random.stateless_uniform([n], seed=seed + 67) < share)
    images_out = tf.where(chosen[:, None, None, None], pitted, x)
    labels_out = tf.where(chosen[:, None], tf.ones_like(labels), labels)
    return images_out, labels_out
