"""Full-integer int8 TFLite export: uint8 raw-pixel input, uint8 p_defect output."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The int8 model must not ship; the message says why."""


def _representative(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    # One extra sample spans 0..255 exactly so the uint8 input quantization is
    # scale 1, zero point 0: the edge then feeds camera pixels as they are.
    first = images[0].astype(np.float32).copy()
    first.flat[0], first.flat[1] = 0.0, 255.0
    yield [first[None, :, :, None]]
    for img in images:
        yield [img.astype(np.float32)[None, :, :, None]]


def to_int8_tflite(model: keras.Model, calibration: np.ndarray) -> bytes:
    """Quantize `model` with `calibration` (uint8 (N, H, W) training images)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: _representative(calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # the converter drops artefacts in the working directory
        try:
            return bytes(converter.convert())
        finally:
            os.chdir(cwd)


def check_int8_accuracy(float_accuracy: float, int8_accuracy: float, max_drop_points: float) -> float:
    """Accuracy points int8 lost against float; ExportError when above the limit."""
    drop = (float_accuracy - int8_accuracy) * 100
    if drop > max_drop_points + 1e-9:
        raise ExportError(
            f"int8 test accuracy {int8_accuracy:.4f} is {drop:.2f} points below float "
            f"{float_accuracy:.4f} (limit {max_drop_points} points)"
        )
    return drop
