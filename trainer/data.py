"""tf.data input pipelines over images decoded once by edge.vision.preprocess.

Decoding every file once with the edge's own function means training, evaluation and
the line see identical pixels; the per-epoch hot path is gather + batched augmentation
in TensorFlow, with no per-image Python.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer import synth
from trainer.augment import AugmentConfig, augment


def train_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, cfg: AugmentConfig, seed: int, start_step: int = 0,
    circles: np.ndarray | None = None, margin: float = 0.0, fill: float = 128.0,
    tone: tuple[float, ...] | None = None, pool: np.ndarray | None = None, gentle: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Endless shuffled, augmented batches of (float32 (B, H, W, 1), float32 (B, 1)).

    Batch k is a function of (seed, k) alone. `start_step` starts the stream at batch k,
    so a run resumed after k steps trains on exactly the batches an uninterrupted run
    would have seen next, not on the first ones again. Only indices are skipped: cheap.
    `circles` (N, 4): each image's rim and backdrop grey, for the line conditions and the
    part-only mask (`margin`, `fill`) and its tone map (`tone`: the reference, edge.vision.tone).
    `pool`: the image indices an epoch draws from (trainer.hard: mined ones repeated; default each
    once); `gentle` (N,) bool: images whose focus and motion are kept mild (trainer.augment).
    """
    if cfg.pinholes > 0 and circles is None:
        raise ValueError("synthetic pinholes need each image's rim circle (circles=)")
    x = tf.constant(images[..., None])
    c = tf.constant(np.zeros((len(images), 4), np.float32) if circles is None else circles.astype(np.float32))
    y = tf.constant(labels.astype(np.float32)[:, None])
    g = None if gentle is None else tf.constant(gentle.astype(bool))
    order = np.arange(len(images), dtype=np.int64) if pool is None else pool.astype(np.int64)
    n = len(order)
    idx = tf.data.Dataset.from_tensor_slices(order).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    idx = idx.batch(batch_size, drop_remainder=n >= batch_size).skip(start_step)
    steps = tf.data.Dataset.counter(start=start_step)

    def load(batch_idx: tf.Tensor, step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        s = tf.stack([tf.constant(seed, tf.int64), step * 16])
        batch_circles = tf.gather(c, batch_idx) if circles is not None else None
        batch_y = tf.gather(y, batch_idx)
        pits = synth.choose(batch_y, cfg.pinholes, s) if cfg.pinholes > 0 else None
        batch_x = augment(tf.gather(x, batch_idx), cfg, s, batch_circles, margin, fill, pits=pits, tone=tone,
                          gentle=None if g is None else tf.gather(g, batch_idx))
        return batch_x, batch_y if pits is None else synth.as_defects(batch_y, pits)

    return tf.data.Dataset.zip((idx, steps)).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                                 deterministic=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray | None, batch_size: int) -> tf.data.Dataset:
    """Un-augmented batches in file order."""
    x = images[..., None]
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(x)
        return ds.batch(batch_size).map(lambda a: tf.cast(a, tf.float32)).prefetch(2)
    y = labels.astype(np.float32)[:, None]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    return ds.map(lambda a, b: (tf.cast(a, tf.float32), b)).prefetch(2)
