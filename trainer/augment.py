"""On-the-fly augmentation as batched TensorFlow ops (no per-image Python).

Semantics follow Keras' legacy ImageDataGenerator as the notebook configured it: one
random affine per image (rotation, shift, shear in degrees, independent x/y zoom, flips)
resampled bilinearly with 'nearest' fill, then brightness scaling clipped to 0..255.
`blur` is an extra for the line camera's focus, off for the notebook's settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 360.0  # full range in degrees: angle ~ U(-r/2, r/2)
    shift: float = 0.05  # fraction of width/height
    shear: float = 0.05  # degrees, as ImageDataGenerator's shear_range
    zoom: float = 0.05  # zoom ~ U(1-z, 1+z) per axis
    hflip: bool = True
    vflip: bool = True
    brightness: tuple[float, float] = (0.75, 1.25)
    blur: float = 0.0  # probability-like weight of a mild Gaussian blur

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


NOTEBOOK = AugmentConfig()
# The default architecture also learns the framing and focus the edge crop produces.
LINE = AugmentConfig(zoom=0.10, shift=0.06, brightness=(0.8, 1.2), blur=0.5)


def _transforms(cfg: AugmentConfig, n: tf.Tensor, h: int, w: int, seed: tf.Tensor) -> tf.Tensor:
    """(n, 8) projective transforms mapping output pixel -> input pixel."""

    def u(i: int, lo: float, hi: float) -> tf.Tensor:
        return tf.random.stateless_uniform([n], seed=seed + i, minval=lo, maxval=hi)

    theta = u(1, -cfg.rotation / 2, cfg.rotation / 2) * (math.pi / 180.0)
    shear = u(2, -cfg.shear, cfg.shear) * (math.pi / 180.0)
    zx = u(3, 1 - cfg.zoom, 1 + cfg.zoom)
    zy = u(4, 1 - cfg.zoom, 1 + cfg.zoom)
    tx = u(5, -cfg.shift, cfg.shift) * w
    ty = u(6, -cfg.shift, cfg.shift) * h
    fx = tf.where(u(7, 0, 1) < 0.5, -1.0, 1.0) if cfg.hflip else tf.ones([n])
    fy = tf.where(u(8, 0, 1) < 0.5, -1.0, 1.0) if cfg.vflip else tf.ones([n])
    c, s = tf.cos(theta), tf.sin(theta)
    # M = R(theta) @ Shear @ Zoom @ Flip, applied about the image centre.
    sh_s, sh_c = -tf.sin(shear), tf.cos(shear)
    a00 = c * zx * fx
    a01 = (c * sh_s - s * sh_c) * zy * fy
    a10 = s * zx * fx
    a11 = (s * sh_s + c * sh_c) * zy * fy
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a02 = cx - a00 * cx - a01 * cy + tx
    a12 = cy - a10 * cx - a11 * cy + ty
    zeros = tf.zeros([n])
    return tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)



def _blur_kernel() -> tf.Tensor:
    g = tf.constant([0.0545, 0.2442, 0.4026, 0.2442, 0.0545])  # sigma ~1 px
    k = tf.tensordot(g, g, axes=0)
    return tf.reshape(k, [5, 5, 1, 1])


def augment(images: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """uint8/float (B, H, W, 1) -> augmented float32 (B, H, W, 1) in 0..255."""
    x = tf.cast(images, tf.float32)
    n = tf.shape(x)[0]
    h, w = int(x.shape[1]), int(x.shape[2])
    seed = tf.cast(seed, tf.int64)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=_transforms(cfg, n, h, w, seed),
        output_shape=tf.constant([h, w], tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    if cfg.blur > 0:
        blurred = tf.nn.conv2d(tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]], "SYMMETRIC"),
                               _blur_kernel(), strides=1, padding="VALID")
        a = tf.random.stateless_uniform([n, 1, 1, 1], seed=seed + 9, maxval=cfg.blur)
        x = x * (1 - a) + blurred * a
    lo, hi = cfg.brightness
    if (lo, hi) != (1.0, 1.0):
        x = x * tf.random.stateless_uniform([n, 1, 1, 1], seed=seed + 10, minval=lo, maxval=hi)
    return tf.clip_by_value(x, 0.0, 255.0)
