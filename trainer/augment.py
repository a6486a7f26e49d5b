"""On-the-fly augmentation as batched TensorFlow ops (no per-image Python).

Semantics follow Keras' legacy ImageDataGenerator as the notebook configured it: one
random affine per image (rotation, shift, shear in degrees, independent x/y zoom, flips)
resampled bilinearly with 'nearest' fill, then brightness scaling clipped to 0..255.
`blur` is an extra for the line camera's focus, off for the notebook's settings.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import tensorflow as tf

from edge.offline.conditions import BACKDROP_KSIZE, BACKDROP_SIGMA, LIKE_SOFT, LIKE_TOL
from edge.vision.tone import tone_map_batch
from trainer import synth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 360.0  # full range in degrees: angle ~ U(-r/2, r/2)
    shift: float = 0.05  # fraction of width/height
    shear: float = 0.05  # degrees, as ImageDataGenerator's shear_range
    zoom: float = 0.05  # zoom ~ U(1-z, 1+z) per axis
    hflip: bool = True
    vflip: bool = True
    brightness: tuple[float, float] = (0.75, 1.25)
    blur: float = 0.0  # largest weight of a mild Gaussian blur (focus drifting off)
    sharpen: float = 0.0  # largest unsharp-mask amount (a crisper lens or in-camera sharpening)
    interpolation: str = "bilinear"  # or "bicubic": resampling that keeps the part's crispness
    # Line conditions (part_only recipes; all off for the older ones). They need each image's
    # rim circle and backdrop grey (trainer.data passes them as `circles`).
    backdrop: float = 0.0  # share of images whose backdrop is replaced by a random belt
    backdrop_grey: tuple[float, float] = (50.0, 235.0)  # the new belt's grey level range
    gain: tuple[float, float] = (1.0, 1.0)  # lighting gain on the part (after gamma)
    gamma: tuple[float, float] = (1.0, 1.0)
    motion_blur: float = 0.0  # longest motion-blur streak in pixels (any direction)
    noise: float = 0.0  # largest sensor-noise sigma in grey levels
    jpeg: float = 0.0  # share of images re-compressed as JPEG
    jpeg_quality: tuple[int, int] = (60, 95)
    part_only: bool = False  # mask beyond the (transformed) rim as edge.vision.partview does
    mask_jitter: float = 0.0  # relative error of the located rim radius the mask is drawn at
    mask_shift: float = 0.0  # error of the located rim centre the mask is drawn at, in rim radii
    pinholes: float = 0.0  # share of good images given a synthetic pinhole and labelled defect (trainer.synth)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


GENTLE_MOTION = 2.0  # px: the longest streak of a `gentle` image (trainer.hard): a pit stays visible
NOTEBOOK = AugmentConfig()
# The default architecture also learns the framing and focus the edge crop produces.
LINE = AugmentConfig(zoom=0.10, shift=0.06, brightness=(0.8, 1.2), blur=0.5)
# Bilinear resampling at a random angle halves an image's high-frequency energy (median
# Laplacian variance of ok parts 162 -> 77), so with `line` the network only ever sees
# softer parts than the camera delivers and reads crispness as a defect. An unsharp mask
# up to 1.5 puts the augmented median (165) back at the camera's, widened both ways. Not
# the default: its 40-epoch model separated the test set fully but scored two pinhole
# defects of validation lower, so its validation-chosen threshold rejected more good
# parts (docs/training.md, "Crispness").
LINE_SHARPEN = replace(LINE, sharpen=1.5)
# The other way to the same end: resample bicubically, which keeps most of the part's
# crispness instead of restoring it with an unsharp mask, and jitter focus both ways
# around it (median Laplacian variance of augmented good parts 125, 10th-90th 57-277).
LINE_CRISP = replace(LINE, interpolation="bicubic", sharpen=0.5)

# `line-crisp` for a part-only model under what line cameras do to a part: any belt behind
# it (grey 50-235, plain, grainy or woven) inside the kept margin, lighting gain 0.7-1.35
# and gamma 0.7-1.4 on the part, focus both ways, motion streaks up to 7 px, sensor noise,
# JPEG quality 60-95, crop scale +-10% and offset +-6%, then the part-only mask drawn at the
# rim as the edge would locate it on the new belt: radius error up to 4% and centre error up to
# 3% of the radius (measured 2026-12-03: the rim found on the same test part on another belt moves
# by 2.5-4.6 px (p95) in radius and 4-6 px in centre; bundles before then: 2%, no shift).
LINE_PART = replace(LINE_CRISP, brightness=(1.0, 1.0), backdrop=0.8, gain=(0.7, 1.35), gamma=(0.7, 1.4),
                    motion_blur=7.0, noise=4.0, jpeg=0.3, part_only=True, mask_jitter=0.04, mask_shift=0.03)

# `line-part` plus synthetic pinholes on 15% of the good images (trainer.synth), drawn after focus
# and motion: the pits of a few pixels that set every validation threshold since November.
LINE_PINHOLE = replace(LINE_PART, pinholes=0.15)

AUGMENTATIONS: dict[str, AugmentConfig] = {"notebook": NOTEBOOK, "line": LINE, "line-sharpen": LINE_SHARPEN,
                                           "line-crisp": LINE_CRISP, "line-part": LINE_PART,
                                           "line-pinhole": LINE_PINHOLE}


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


def _warp_reference(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """TensorFlow's own kernel: bilinear, 'nearest' fill (ImageDataGenerator's default)."""
    h, w = int(images.shape[1]), int(images.shape[2])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms, output_shape=tf.constant([h, w], tf.int32),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")


def _sources(images: tf.Tensor, transforms: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(B, H*W) float pixels and each output pixel's source coordinate (B, H, W), x and y.

    'nearest' fill = the source coordinate clamped to the image, then interpolated.
    """
    b, h, w = tf.shape(images)[0], int(images.shape[1]), int(images.shape[2])
    ys, xs = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    a = [transforms[:, i, None, None] for i in range(6)]
    sx = tf.clip_by_value(a[0] * xs + a[1] * ys + a[2], 0.0, w - 1.0)
    sy = tf.clip_by_value(a[3] * xs + a[4] * ys + a[5], 0.0, h - 1.0)
    return tf.reshape(tf.cast(images, tf.float32), [b, h * w]), sx, sy


@tf.function(jit_compile=True)
def _warp_xla(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """The same warp as _warp_reference, written as gathers that XLA fuses into one loop.

    ImageProjectiveTransformV3 evaluates a generic projective functor per pixel (~16 ns
    each here): it was most of the input pipeline's CPU time, which on a small machine
    is taken straight from the model's training step. Fused, the warp runs ~3.6x faster
    on one core; pixels agree with the reference within float rounding (< 0.01 of 255).
    Affine only: the transforms' projective terms are zero.
    """
    flat, sx, sy = _sources(images, transforms)
    b, h, w = tf.shape(images)[0], int(images.shape[1]), int(images.shape[2])
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = tf.reshape(sx - x0, [b, h * w]), tf.reshape(sy - y0, [b, h * w])
    x0i, y0i = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1i, y1i = tf.minimum(x0i + 1, w - 1), tf.minimum(y0i + 1, h - 1)

    def at(yi: tf.Tensor, xi: tf.Tensor) -> tf.Tensor:
        return tf.gather(flat, tf.reshape(yi * w + xi, [b, h * w]), batch_dims=1)

    v00, v01, v10, v11 = at(y0i, x0i), at(y0i, x1i), at(y1i, x0i), at(y1i, x1i)
    top = v00 + fx * (v01 - v00)
    bottom = v10 + fx * (v11 - v10)
    return tf.reshape(top + fy * (bottom - top), [b, h, w, 1])


CUBIC_A = -0.5  # Keys' cubic convolution parameter (Catmull-Rom); OpenCV's INTER_CUBIC uses -0.75


def _cubic_weights(t: tf.Tensor, a: float) -> list[tf.Tensor]:
    """Keys' kernel at distances 1+t, t, 1-t, 2-t: the weights of taps -1, 0, +1, +2."""
    def near(d: tf.Tensor) -> tf.Tensor:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: tf.Tensor) -> tf.Tensor:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(1 + t), near(t), near(1 - t), far(2 - t)]


def _warp_cubic(images: tf.Tensor, transforms: tf.Tensor, a: float = CUBIC_A) -> tf.Tensor:
    """Bicubic counterpart of _warp_xla ('nearest' fill: coordinate and taps clamped).

    Bilinear resampling at a random angle is a low-pass filter: it halves a part's
    high-frequency energy (median Laplacian variance 162 -> 112 on good parts), so the
    network trains on softer images than the camera delivers. Bicubic keeps ~95% (154).
    16 taps instead of 4; may overshoot 0..255 slightly (augment clips).
    """
    flat, sx, sy = _sources(images, transforms)
    b, h, w = tf.shape(images)[0], int(images.shape[1]), int(images.shape[2])
    x0, y0 = tf.floor(sx), tf.floor(sy)
    wx = [tf.reshape(k, [b, h * w]) for k in _cubic_weights(sx - x0, a)]
    wy = [tf.reshape(k, [b, h * w]) for k in _cubic_weights(sy - y0, a)]
    x0i, y0i = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    cols = [tf.clip_by_value(x0i + d, 0, w - 1) for d in (-1, 0, 1, 2)]
    rows = [tf.clip_by_value(y0i + d, 0, h - 1) * w for d in (-1, 0, 1, 2)]
    out = tf.zeros([b, h * w])
    for r, wr in zip(rows, wy, strict=True):
        line = tf.zeros([b, h * w])
        for c, wc in zip(cols, wx, strict=True):
            line += wc * tf.gather(flat, tf.reshape(r + c, [b, h * w]), batch_dims=1)
        out += wr * line
    return tf.reshape(out, [b, h, w, 1])


_warp_cubic_xla = tf.function(_warp_cubic, jit_compile=True)
_warp_cubic_plain = tf.function(_warp_cubic)

_use_xla: bool | None = None


def _warp(images: tf.Tensor, transforms: tf.Tensor, interpolation: str = "bilinear") -> tf.Tensor:
    """The fused warp where XLA compiles for the CPU (standard TensorFlow wheels), else the reference
    (bilinear: ImageProjectiveTransformV3; bicubic: the same gathers, not compiled)."""
    global _use_xla
    if _use_xla is None:
        try:
            with tf.init_scope():  # run the probe now, even while a tf.data map is being traced
                # inside a tf.data map, where the training pipeline calls it (older releases refused)
                probe = tf.data.Dataset.from_tensors(tf.zeros([1, 4, 4, 1], tf.uint8)).map(
                    lambda x: _warp_xla(x, tf.constant([[1.0, 0, 0, 0, 1.0, 0, 0, 0]])))
                next(iter(probe))
            _use_xla = True
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError) as exc:
            log.warning("XLA unavailable; augmenting with ImageProjectiveTransformV3 (slower)",
                        extra={"error": str(exc).splitlines()[0]})
            _use_xla = False
    if interpolation == "bicubic":
        return _warp_cubic_xla(images, transforms) if _use_xla else _warp_cubic_plain(images, transforms)
    if interpolation != "bilinear":
        raise ValueError(f"interpolation {interpolation!r}: choose bilinear or bicubic")
    return _warp_xla(images, transforms) if _use_xla else _warp_reference(images, transforms)


def _grid(h: int, w: int) -> tuple[tf.Tensor, tf.Tensor]:
    ys, xs = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    return xs[None], ys[None]


def _backdrop_surface(filled: tf.Tensor) -> tf.Tensor:
    """edge.offline.conditions.backdrop_surface in TensorFlow: the same separable Gaussian, reflect-101 border."""
    k = BACKDROP_KSIZE
    t = tf.range(k, dtype=tf.float32) - (k - 1) / 2
    g = tf.exp(-0.5 * (t / BACKDROP_SIGMA) ** 2)
    g = g / tf.reduce_sum(g)
    pad = (k - 1) // 2
    x = tf.pad(filled, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    x = tf.nn.conv2d(x, tf.reshape(g, [k, 1, 1, 1]), strides=1, padding="VALID")
    return tf.nn.conv2d(x, tf.reshape(g, [1, k, 1, 1]), strides=1, padding="VALID")


def _new_backdrop(images: tf.Tensor, lit: tf.Tensor, circles: tf.Tensor, cfg: AugmentConfig,
                  seed: tf.Tensor) -> tf.Tensor:
    """Another belt behind the part: outside the rim, pixels near the old backdrop's grey are moved
    to a new grey (keeping their fine texture) plus a random texture; pixels unlike the backdrop
    (the rim's outline, flash, burrs: the part) keep the part's lighting (`lit`)."""
    n = tf.shape(images)[0]
    h, w = int(images.shape[1]), int(images.shape[2])
    x = tf.cast(images, tf.float32)

    def u(i: int, lo: float, hi: float, shape: list | None = None) -> tf.Tensor:
        return tf.random.stateless_uniform(shape or [n, 1, 1, 1], seed=seed + i, minval=lo, maxval=hi)

    xs, ys = _grid(h, w)
    cx, cy, r, bg = (circles[:, i, None, None, None] for i in range(4))
    outside = tf.sqrt((xs[..., None] - cx) ** 2 + (ys[..., None] - cy) ** 2) > r
    residual = x - _backdrop_surface(tf.where(outside, x, bg))
    like_backdrop = 1.0 - tf.clip_by_value((tf.abs(residual) - LIKE_TOL) / LIKE_SOFT, 0.0, 1.0)
    grey = u(21, *cfg.backdrop_grey)
    # texture: grain (blurred noise), a woven pattern, a gradient; each with a random amplitude
    grain = tf.nn.conv2d(tf.random.stateless_normal([n, h + 4, w + 4, 1], seed=seed + 22), _blur_kernel(),
                         strides=1, padding="VALID") * u(23, 0.0, 40.0)
    phi = u(24, 0.0, math.pi)
    period = u(25, 4.0, 14.0)
    a = (xs[..., None] * tf.cos(phi) + ys[..., None] * tf.sin(phi)) * (2 * math.pi) / period
    b = (-xs[..., None] * tf.sin(phi) + ys[..., None] * tf.cos(phi)) * (2 * math.pi) / period
    weave = tf.sin(a) * tf.sin(b) * u(26, 0.0, 25.0) * tf.cast(u(27, 0, 1) < 0.4, tf.float32)
    gphi = u(28, 0.0, 2 * math.pi)
    gradient = ((xs[..., None] - w / 2) * tf.cos(gphi) + (ys[..., None] - h / 2) * tf.sin(gphi)) / w * u(29, 0, 40)
    belt = grey + residual + grain + weave + gradient
    replaced = tf.where(outside, like_backdrop * belt + (1 - like_backdrop) * lit, lit)
    chosen = u(30, 0, 1) < cfg.backdrop
    return tf.clip_by_value(tf.where(chosen, replaced, lit), 0.0, 255.0)


def _motion_blur(x: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor, gentle: tf.Tensor | None = None) -> tf.Tensor:
    """A streak of random length (0..motion_blur px; `gentle` images 0..GENTLE_MOTION) and direction
    per image: one depthwise convolution with the batch moved to channels (a kernel per image)."""
    n = tf.shape(x)[0]
    k = 9  # kernel side: streaks up to 8 px
    longest = min(cfg.motion_blur, k - 1)
    length = tf.random.stateless_uniform([n], seed=seed + 31, minval=0.0, maxval=longest)
    length = length if gentle is None else tf.where(gentle, length * min(GENTLE_MOTION / longest, 1.0), length)
    angle = tf.random.stateless_uniform([n], seed=seed + 32, minval=0.0, maxval=math.pi)
    t = tf.linspace(-0.5, 0.5, 17)  # samples along the streak
    px = (k - 1) / 2 + t[None, :] * length[:, None] * tf.cos(angle)[:, None]
    py = (k - 1) / 2 + t[None, :] * length[:, None] * tf.sin(angle)[:, None]
    grid = tf.range(k, dtype=tf.float32)
    wx = tf.nn.relu(1.0 - tf.abs(px[:, :, None] - grid[None, None, :]))  # (n, 17, k) bilinear splat
    wy = tf.nn.relu(1.0 - tf.abs(py[:, :, None] - grid[None, None, :]))
    kern = tf.einsum("nsi,nsj->nij", wy, wx)  # (n, k_y, k_x)
    kern = kern / tf.reduce_sum(kern, axis=[1, 2], keepdims=True)
    kern = tf.transpose(kern, [1, 2, 0])[:, :, :, None]  # (k, k, n, 1)
    h, w = int(x.shape[1]), int(x.shape[2])
    padded = tf.pad(x, [[0, 0], [k // 2, k // 2], [k // 2, k // 2], [0, 0]], "SYMMETRIC")
    chans = tf.transpose(padded, [3, 1, 2, 0])  # (1, H+, W+, n)
    out = tf.nn.depthwise_conv2d(chans, kern, strides=[1, 1, 1, 1], padding="VALID")
    return tf.reshape(tf.transpose(out, [3, 1, 2, 0]), [n, h, w, 1])


def _jpeg(x: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Re-compress a share of the images at a random quality (per image: TF has no batched JPEG)."""
    n = tf.shape(x)[0]
    chosen = tf.random.stateless_uniform([n], seed=seed + 41) < cfg.jpeg
    quality = tf.random.stateless_uniform([n], seed=seed + 42, minval=cfg.jpeg_quality[0],
                                          maxval=cfg.jpeg_quality[1] + 1, dtype=tf.int32)

    def one(args: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tf.Tensor:
        img, q, c = args
        u8 = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
        return tf.cond(c, lambda: tf.cast(tf.image.adjust_jpeg_quality(u8, q), tf.float32), lambda: img)

    return tf.map_fn(one, (x, quality, chosen), fn_output_signature=tf.float32)


def _part_mask(transforms: tf.Tensor, circles: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor, h: int,
               w: int, margin: float) -> tf.Tensor:
    """(B, H, W, 1) bool: output pixels whose source lies within the rim radius x (1 + margin),
    the radius off by up to mask_jitter as the edge's rim finder may be (edge.vision.partview)."""
    n = tf.shape(transforms)[0]
    xs, ys = _grid(h, w)

    def col(t: tf.Tensor, i: int) -> tf.Tensor:
        return tf.reshape(t[:, i], [n, 1, 1])

    sx = col(transforms, 0) * xs + col(transforms, 1) * ys + col(transforms, 2)
    sy = col(transforms, 3) * xs + col(transforms, 4) * ys + col(transforms, 5)
    jitter = tf.random.stateless_uniform([n, 1, 1], seed=seed + 51, minval=-cfg.mask_jitter, maxval=cfg.mask_jitter)
    radius = col(circles, 2) * (1 + margin) * (1 + jitter)
    shift = tf.random.stateless_uniform([n, 1, 1], seed=seed + 52, minval=0.0, maxval=cfg.mask_shift) * col(circles, 2)
    toward = tf.random.stateless_uniform([n, 1, 1], seed=seed + 53, minval=0.0, maxval=2 * math.pi)
    cx, cy = col(circles, 0) + shift * tf.cos(toward), col(circles, 1) + shift * tf.sin(toward)
    inside = tf.square(sx - cx) + tf.square(sy - cy) <= tf.square(radius)
    return inside[..., None]


def augment(images: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor, circles: tf.Tensor | None = None,
            margin: float = 0.0, fill: float = 128.0, pits: tf.Tensor | None = None,
            tone: tuple[float, ...] | None = None, gentle: tf.Tensor | None = None) -> tf.Tensor:
    """uint8/float (B, H, W, 1) -> augmented float32 (B, H, W, 1) in 0..255.

    `circles` (B, 4): each image's rim (cx, cy, r) and backdrop grey, needed by the line
    conditions and the part-only mask (`margin`, `fill`: the bundle's edge.vision.partview spec).
    `pits` (B,) bool: images that get a synthetic pinhole (trainer.synth; the caller relabels them).
    `tone`: a part-only bundle's reference tones: each image, rounded to uint8 as a camera's, is
    mapped by edge.vision.tone inside the rim the mask is drawn at, as the edge maps a crop.
    `gentle` (B,) bool: no defocus and short motion streaks (trainer.hard's defects: a pit stays).
    """
    n = tf.shape(images)[0]
    h, w = int(images.shape[1]), int(images.shape[2])
    seed = tf.cast(seed, tf.int64)
    needs_circles = cfg.backdrop > 0 or cfg.part_only or pits is not None
    if needs_circles and circles is None:
        raise ValueError("this augmentation needs each image's rim circle (circles=)")
    x = tf.cast(images, tf.float32)
    if cfg.gamma != (1.0, 1.0) or cfg.gain != (1.0, 1.0):
        g = tf.random.stateless_uniform([n, 1, 1, 1], seed=seed + 11, minval=cfg.gamma[0], maxval=cfg.gamma[1])
        k = tf.random.stateless_uniform([n, 1, 1, 1], seed=seed + 12, minval=cfg.gain[0], maxval=cfg.gain[1])
        lit = tf.clip_by_value(255.0 * tf.pow(x / 255.0, g) * k, 0.0, 255.0)
    else:
        lit = x
    if cfg.backdrop > 0:
        circles = tf.cast(circles, tf.float32)
        x = _new_backdrop(x, lit, circles, cfg, seed)
    else:
        x = lit
    transforms = _transforms(cfg, n, h, w, seed)
    x = _warp(x, transforms, cfg.interpolation)
    if cfg.blur > 0 or cfg.sharpen > 0:
        # One focus axis: a > 0 blends towards the blur, a < 0 is an unsharp mask.
        blurred = tf.nn.conv2d(tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]], "SYMMETRIC"),
                               _blur_kernel(), strides=1, padding="VALID")
        a = tf.random.stateless_uniform([n, 1, 1, 1], seed=seed + 9, minval=-cfg.sharpen, maxval=cfg.blur)
        a = a if gentle is None else tf.where(tf.reshape(gentle, [n, 1, 1, 1]), tf.minimum(a, 0.0), a)
        x = x * (1 - a) + blurred * a
    if cfg.motion_blur > 0:
        x = _motion_blur(x, cfg, seed, gentle)
    lo, hi = cfg.brightness
    if (lo, hi) != (1.0, 1.0):
        x = x * tf.random.stateless_uniform([n, 1, 1, 1], seed=seed + 10, minval=lo, maxval=hi)
    if pits is not None:  # after focus and motion, which would erase a pit its label still names
        x = synth.draw_pits(x, pits, tf.cast(circles, tf.float32), transforms, seed)
    if cfg.noise > 0:
        sigma = tf.random.stateless_uniform([n, 1, 1, 1], seed=seed + 13, minval=0.0, maxval=cfg.noise)
        x = x + sigma * tf.random.stateless_normal(tf.shape(x), seed=seed + 14)
    x = tf.clip_by_value(x, 0.0, 255.0)
    if cfg.jpeg > 0:
        x = _jpeg(x, cfg, seed)
    if cfg.part_only:
        circles = tf.cast(circles, tf.float32)
        if tone is not None:
            x = _tone(x, _part_mask(transforms, circles, cfg, seed, h, w, 0.0), tone)
        x = tf.where(_part_mask(transforms, circles, cfg, seed, h, w, margin), x, fill)
    elif tone is not None:
        raise ValueError("tones are matched inside the rim: only a part-only augmentation can take tone=")
    return x


def _tone(x: tf.Tensor, region: tf.Tensor, tone: tuple[float, ...]) -> tf.Tensor:
    """The edge's own tone map on the batch (edge.vision.tone.tone_map_batch): identical pixels."""
    ref = np.asarray(tone, np.float64)
    out = tf.numpy_function(lambda a, r: tone_map_batch(a, r, ref), [x, region], tf.float32, stateful=False)
    out.set_shape(x.shape)
    return out
