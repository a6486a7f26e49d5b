"""Full-integer int8 TFLite export: uint8 raw-pixel input, uint8 p_defect (or logit) output.

A uint8 probability has steps of 1/256, and a cost:20 threshold lies near p 0.01: there the
decision sees four or five levels, and every defect scored below 1/256 ties with the good parts.
`output="logit"` exports the same weights without the final sigmoid, the logit clipped to
+-LOGIT_CLIP, in steps of about 0.08 log-odds over the range the calibration images give it
(edge.vision.partview.OUTPUTS).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from edge.vision.partview import OUTPUTS

log = logging.getLogger(__name__)

LOGIT_CLIP = 10.0  # p 4.5e-5 .. 1 - 4.5e-5: far outside any threshold, and int8's range stays narrow
OUTPUT_LAYER = "p_defect"  # trainer.models: every architecture's last layer, a 1-unit sigmoid Dense


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


def logit_model(model: keras.Model) -> keras.Model:
    """`model` with its sigmoid output layer replaced by the same Dense without activation, clipped."""
    try:
        head = model.get_layer(OUTPUT_LAYER)
    except ValueError:
        raise ExportError(f"no '{OUTPUT_LAYER}' layer to take the logit from (architectures of trainer.models "
                          "end in one)") from None
    dense = layers.Dense(1, name="logit")
    z = dense(head.input)
    dense.set_weights(head.get_weights())
    z = layers.Activation(lambda t: keras.ops.clip(t, -LOGIT_CLIP, LOGIT_CLIP), name="logit_clip")(z)
    return keras.Model(model.inputs, z, name=f"{model.name}_logit")


def to_int8_tflite(model: keras.Model, calibration: np.ndarray, output: str = "p_defect") -> bytes:
    """Quantize `model` with `calibration` (uint8 (N, H, W) training images); `output`: OUTPUTS."""
    if output not in OUTPUTS:
        raise ExportError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}")
    if output == "logit":
        model = logit_model(model)
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
