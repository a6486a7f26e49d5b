"""Training throughput: this project's tf.data pipeline vs the notebook's ImageDataGenerator.

Same model (the notebook's CNN), same batch size, same augmentation settings, one run:

    .venv/bin/pip install -e '.[train,bench]'   # scipy, for the ImageDataGenerator baseline
    .venv/bin/python bench/train_throughput.py [--steps 40] [--data DIR]

Prints images/s of model.fit for each input pipeline (after warm-up) and their ratio,
each pipeline's images/s on its own (no model: the ceiling it puts on training), and the
one-time decode cost of the tf.data pipeline (it decodes every file once).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras.src.legacy.preprocessing.image import ImageDataGenerator  # noqa: E402

from edge.dataset import (  # noqa: E402
    default_data_root,
    list_labelled,
    load_samples,
    stratified_split,
)
from trainer.augment import NOTEBOOK  # noqa: E402
from trainer.data import train_dataset  # noqa: E402
from trainer.models import seed_cnn  # noqa: E402

BATCH = 64


def timed_fit(model: keras.Model, data: object, steps: int) -> float:
    model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # warm-up: graph build, first batches
    t = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * BATCH / (time.perf_counter() - t)


def pipeline_only(data: object, steps: int) -> float:
    """Images/s the input pipeline alone delivers (no model): its ceiling for training."""
    it = iter(data)
    for _ in range(3):
        next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * BATCH / (time.perf_counter() - t)


def fresh_model() -> keras.Model:
    keras.utils.set_random_seed(123)
    m = seed_cnn((300, 300))
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    train_dir = (args.data or default_data_root()) / "train"

    t = time.perf_counter()
    loaded = load_samples(list_labelled(train_dir))
    decode_s = time.perf_counter() - t
    fit_idx, _ = stratified_split(loaded.labels, 0.2, 123)
    ours_ds = train_dataset(loaded.images[fit_idx], loaded.labels[fit_idx], BATCH, NOTEBOOK, 123)
    ours = timed_fit(fresh_model(), ours_ds, args.steps)

    gen = ImageDataGenerator(rotation_range=360, width_shift_range=0.05, height_shift_range=0.05,
                             shear_range=0.05, zoom_range=0.05, horizontal_flip=True, vertical_flip=True,
                             brightness_range=[0.75, 1.25], validation_split=0.2)
    flow = gen.flow_from_directory(str(train_dir), target_size=(300, 300), color_mode="grayscale",
                                   classes=["ok_front", "def_front"], class_mode="binary", batch_size=BATCH,
                                   subset="training", shuffle=True, seed=123)
    baseline = timed_fit(fresh_model(), flow, args.steps)
    ours_alone = pipeline_only(ours_ds, args.steps)
    baseline_alone = pipeline_only(flow, args.steps)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"TensorFlow {tf.__version__}, GPU: {bool(tf.config.list_physical_devices('GPU'))}")
    print(f"model: notebook CNN, batch {BATCH}, {args.steps} timed steps each")
    print(f"ImageDataGenerator (notebook): {baseline:8.1f} images/s")
    print(f"tf.data pipeline (edge-train): {ours:8.1f} images/s")
    print(f"ratio: {ours / baseline:.2f}x")
    print(f"input pipeline alone (no model): ImageDataGenerator {baseline_alone:.1f} images/s, "
          f"tf.data {ours_alone:.1f} images/s, ratio {ours_alone / baseline_alone:.2f}x")
    print(f"one-time decode of {len(loaded.paths)} train images: {decode_s:.1f} s "
          f"({len(loaded.paths) / decode_s:.0f} images/s)")
    per_epoch = 150 * BATCH
    print(f"25 x 150-step epochs: ImageDataGenerator {25 * per_epoch / baseline / 60:.1f} min, "
          f"tf.data {(25 * per_epoch / ours + decode_s) / 60:.1f} min including decode")


if __name__ == "__main__":
    main()
