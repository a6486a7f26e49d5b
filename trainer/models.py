"""Model architectures. Input: float (H, W, 1) raw pixels 0..255; output: p_defect.

The rescale to [0, 1] is inside the model so the int8 export takes raw uint8 pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers

from edge.vision.preprocess import IMAGE_SIZE


def seed_cnn(size: tuple[int, int]) -> keras.Model:
    """The published notebook's CNN, layer for layer (676,945 parameters at 300x300)."""
    inp = keras.Input((*size, 1), name="image")
    x = layers.Rescaling(1.0 / 255)(inp)
    x = layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = layers.MaxPooling2D(2, strides=2)(x)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.MaxPooling2D(2, strides=2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    out = layers.Dense(1, activation="sigmoid", name="p_defect")(x)
    return keras.Model(inp, out, name="seed_cnn")


def _conv_bn(x: keras.KerasTensor, filters: int, strides: int = 1) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)  # short training: stats must keep up
    return layers.ReLU()(x)


def edge_cnn(size: tuple[int, int], widths: tuple[int, ...] = (16, 24, 48, 64, 96)) -> keras.Model:
    """Default: a five-stage conv net with batch norm and global average+max pooling.

    Global max pooling lets a single small blowhole or burr anywhere on the part drive
    the decision, independent of rotation and position; ~50 MMAC at 300x300, so int8
    inference stays in the low milliseconds on one core.
    """
    inp = keras.Input((*size, 1), name="image")
    x = layers.Rescaling(1.0 / 255)(inp)
    x = _conv_bn(x, widths[0], strides=2)
    x = layers.MaxPooling2D(2)(x)
    for filters in widths[1:-1]:
        x = _conv_bn(x, filters)
        x = layers.MaxPooling2D(2)(x)
    x = _conv_bn(x, widths[-1])
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    x = layers.Dropout(0.3)(x)
    out = layers.Dense(1, activation="sigmoid", name="p_defect")(x)
    return keras.Model(inp, out, name="edge_cnn")


def edge_wide_cnn(size: tuple[int, int]) -> keras.Model:
    """The default network with wider middle stages: ~1.3x the multiply-adds, same int8 latency."""
    return edge_cnn(size, (16, 32, 48, 64, 128))


def edge_wide_stem_cnn(size: tuple[int, int]) -> keras.Model:
    """edge-wide with twice the first stage's filters: more detectors at the finest scale, where
    a pinhole of a few pixels is still visible; ~2x the training compute, same int8 latency."""
    return edge_cnn(size, (32, 32, 48, 64, 128))


ARCHITECTURES: dict[str, Callable[[tuple[int, int]], keras.Model]] = {
    "edge": edge_cnn,
    "edge-wide": edge_wide_cnn,
    "edge-wide-stem": edge_wide_stem_cnn,
    "seed": seed_cnn,
}
DEFAULT_ARCH = "edge"


def save_float(model: keras.Model, arch: str, path: Path) -> None:
    """The weights saved in a plain `arch` network (no training-time wrappers), as bundles hold them."""
    plain = ARCHITECTURES[arch](IMAGE_SIZE)
    plain.set_weights(model.get_weights())
    plain.save(path)
