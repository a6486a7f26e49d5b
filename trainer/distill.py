"""Distillation: train a single edge-sized model towards the averaged opinion of teachers.

On this dataset a model's validation cost is set by two pinhole defects whose scores
vary more from seed to seed than the models do. Averaging several trained models (in
logit space) cancels much of that seed noise, but two models cost twice the edge's
latency budget. The student learns from targets that blend the hard label with the
teachers' averaged probability on the same augmented image, so the edge still runs one
model (Hinton et al., 2015).

Teachers must never have seen the student's validation images, or their opinion would
carry validation labels into training and the validation-chosen threshold would be
judged on images the student has, in effect, trained on. So every teacher must come
from the same training data and the same fit/validation split as the student.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from edge.inference import bundle as bundle_fmt
from edge.offline.dataset import DatasetError
from trainer.compare import split_of

log = logging.getLogger(__name__)

_EPS = 1e-4  # probabilities are clipped to [eps, 1 - eps] before taking logits


class TeacherError(DatasetError):
    """A teacher bundle cannot be used for this run; the message says why."""


@dataclass(frozen=True)
class Teacher:
    path: Path
    model: keras.Model
    record: dict[str, Any]  # what model.json of the student says about this teacher


def _open(path: Path, out: Path | None = None) -> tuple[bundle_fmt.Bundle, Path]:
    """(the teacher's bundle, its float model file), or TeacherError saying why not."""
    if out is not None and path.resolve() == out.resolve():
        raise TeacherError(f"--teacher {path}: is this run's --out; a model cannot teach itself")
    try:
        b = bundle_fmt.load(path)
    except bundle_fmt.BundleError as exc:
        raise TeacherError(f"--teacher {path}: {exc}") from None
    float_file = path / str(b.meta.get("float_model", "model.keras"))
    if not float_file.is_file():
        raise TeacherError(f"--teacher {path}: no float model {float_file.name} (the int8 model alone is too "
                           "coarse a teacher and cannot run inside the training graph)")
    return b, float_file


def identities(paths: list[Path], out: Path | None = None) -> list[str]:
    """Each teacher as "path (float model sha256 prefix)", checked to be a usable bundle.

    Called before the output folder is touched or any image decoded, so a wrong
    --teacher fails fast; the strings go into the resume record, where a teacher
    retrained in place between an interruption and its --resume is a different teacher.
    """
    return [f"{p} (float model {bundle_fmt.sha256_file(_open(p, out)[1])[:16]})" for p in paths]


def load(paths: list[Path], image_size: tuple[int, int], train_fingerprint: str, validation_fingerprint: str,
         split: tuple[int, float, int | None]) -> list[Teacher]:
    """Load and vet each teacher bundle; raises TeacherError naming the bundle and the problem."""
    teachers = []
    for path in paths:
        b, float_file = _open(path)
        data = b.meta.get("training", {}).get("data", {})
        if data.get("train_fingerprint") != train_fingerprint:
            raise TeacherError(
                f"--teacher {path}: trained on other images (train fingerprint "
                f"{str(data.get('train_fingerprint'))[:12]}..., this run {train_fingerprint[:12]}...); a teacher "
                "must come from the same training data, or it may have learnt this run's validation images")
        if split_of(b.meta) != split:
            raise TeacherError(
                f"--teacher {path}: split its training data differently (split seed, validation fraction, "
                f"limit: {split_of(b.meta)}, this run {split}), so it may have trained on this run's "
                "validation images; use a teacher trained with the same --split-seed, --val-fraction and --limit")
        recorded = data.get("validation_fingerprint")
        if recorded is not None and recorded != validation_fingerprint:
            raise TeacherError(f"--teacher {path}: its validation images (fingerprint {recorded[:12]}...) are not "
                               f"this run's ({validation_fingerprint[:12]}...)")
        try:
            model = keras.models.load_model(float_file, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for a bad file
            raise TeacherError(f"--teacher {float_file}: cannot be loaded: {exc}") from None
        if tuple(model.input_shape[1:3]) != tuple(image_size) or model.output_shape[-1] != 1:
            raise TeacherError(f"--teacher {float_file}: input {model.input_shape} / output {model.output_shape}; "
                               f"expected (None, {image_size[0]}, {image_size[1]}, 1) -> (None, 1)")
        record = {"bundle": str(path), "architecture": b.meta.get("architecture"),
                  "float_model_sha256": bundle_fmt.sha256_file(float_file),
                  "validation_fingerprint_checked": recorded is not None}
        teachers.append(Teacher(path, model, record))
        log.info("teacher loaded", extra=record)
    return teachers


def mean_probability(models: list[keras.Model], images: tf.Tensor) -> tf.Tensor:
    """The teachers' probabilities averaged in logit space (a geometric-mean ensemble)."""
    logits = []
    for m in models:
        p = tf.clip_by_value(tf.cast(m(images, training=False), tf.float32), _EPS, 1 - _EPS)
        logits.append(tf.math.log(p) - tf.math.log1p(-p))
    return tf.sigmoid(tf.add_n(logits) / len(logits))


def soften(dataset: tf.data.Dataset, teachers: list[Teacher], weight: float) -> tf.data.Dataset:
    """Replace each batch's labels by (1 - weight) x label + weight x the teachers' probability.

    Runs the teachers on the very augmented images the student is shown. The teachers run
    inside the input pipeline, on the host, so this is simple but costs each step one
    forward pass per teacher.
    """
    models = [t.model for t in teachers]

    def blend(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return x, (1.0 - weight) * y + weight * mean_probability(models, x)

    return dataset.map(blend, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


# `edge-train adapt --keep-base`: a label of MARKED + y marks an image whose target blends the base's opinion.
MARKED = 2.0


def soften_marked(dataset: tf.data.Dataset, teacher: keras.Model, weight: float) -> tf.data.Dataset:
    """`soften` for the marked images only (label MARKED + y); the others keep their plain label.

    For adapting a bundle without forgetting (Li and Hoiem, 2016): the base's own fit images, mixed
    into the fine-tune, learn towards the base's opinion as well as their label, while the new
    line's images, where the base is what is being corrected, learn their labels alone.
    """

    def blend(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        marked = y >= MARKED
        label = tf.where(marked, y - MARKED, y)
        mixed = (1.0 - weight) * label + weight * mean_probability([teacher], x)
        return x, tf.where(marked, mixed, label)

    return dataset.map(blend, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
