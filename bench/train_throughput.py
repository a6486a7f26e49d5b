"""Training throughput: this project's tf.data pipeline vs the notebook's ImageDataGenerator.

Same model (the notebook's CNN), same batch size, same augmentation settings, one run:

    .venv/bin/pip install -e '.[train,bench]'   # scipy, for the ImageDataGenerator baseline
    .venv/bin/python bench/train_throughput.py [--steps 30] [--rounds 5] [--data DIR]
                                               [--precision float32|mixed_bfloat16]

Each measurement runs in its own process, so nothing of one (threads, caches, a
pipeline's autotuning) carries into the next; rounds alternate between the pipelines so
a busy spell on this shared machine hits both alike; the median per pipeline is reported
with every round. Also measured: the model alone on one batch repeated (the ceiling any
input pipeline can reach; its fastest round, see docs/benchmarks.md for the two rates it
runs at on 2 cores) and each pipeline alone without a model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BATCH = 64
KINDS = ("ours", "baseline", "model")
LABELS = {"ours": "tf.data pipeline (edge-train)", "baseline": "ImageDataGenerator (notebook)",
          "model": "model alone (one batch repeated)"}


def _datasets(train_dir: Path, kind: str) -> tuple[object, float]:
    """(training data for `kind`, seconds spent decoding the images up front)."""
    import tensorflow as tf  # noqa: PLC0415

    from edge.offline.dataset import list_labelled, load_samples, stratified_split  # noqa: PLC0415
    from trainer.augment import NOTEBOOK  # noqa: PLC0415
    from trainer.data import train_dataset  # noqa: PLC0415

    if kind == "baseline":
        from keras.src.legacy.preprocessing.image import ImageDataGenerator  # noqa: PLC0415

        gen = ImageDataGenerator(rotation_range=360, width_shift_range=0.05, height_shift_range=0.05,
                                 shear_range=0.05, zoom_range=0.05, horizontal_flip=True, vertical_flip=True,
                                 brightness_range=[0.75, 1.25], validation_split=0.2)
        return gen.flow_from_directory(str(train_dir), target_size=(300, 300), color_mode="grayscale",
                                       classes=["ok_front", "def_front"], class_mode="binary",
                                       batch_size=BATCH, subset="training", shuffle=True, seed=123), 0.0
    t = time.perf_counter()
    loaded = load_samples(list_labelled(train_dir))
    decode_s = time.perf_counter() - t
    fit_idx, _ = stratified_split(loaded.labels, 0.2, 123)
    ds = train_dataset(loaded.images[fit_idx], loaded.labels[fit_idx], BATCH, NOTEBOOK, 123)
    if kind == "model":
        ds = tf.data.Dataset.from_tensors(next(iter(ds))).repeat()
    return ds, decode_s


def measure(train_dir: Path, kind: str, steps: int, precision: str, model: bool) -> dict[str, float]:
    """One measurement, in this process: images/s of model.fit (or of the pipeline alone)."""
    import keras  # noqa: PLC0415

    from trainer.models import seed_cnn  # noqa: PLC0415

    keras.mixed_precision.set_global_policy(precision)
    data, decode_s = _datasets(train_dir, kind)
    if not model:
        it = iter(data)
        for _ in range(5):
            next(it)
        t = time.perf_counter()
        for _ in range(steps):
            next(it)
        return {"rate": steps * BATCH / (time.perf_counter() - t), "decode_s": decode_s}
    keras.utils.set_random_seed(123)
    m = seed_cnn((300, 300))
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    m.fit(data, steps_per_epoch=10, epochs=1, verbose=0)  # warm-up: graph build, queues, caches
    t = time.perf_counter()
    m.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return {"rate": steps * BATCH / (time.perf_counter() - t), "decode_s": decode_s}


def child(train_dir: Path, kind: str, steps: int, precision: str, model: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--data", str(train_dir.parent), "--steps", str(steps),
           "--precision", precision] + ([] if model else ["--no-model"])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    ap.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32",
                    help="Keras dtype policy of the model, the same for every pipeline")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--no-model", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.data is None:
        from edge.offline.dataset import default_data_root  # noqa: PLC0415

        args.data = default_data_root()
    train_dir = args.data / "train"
    if args.child:
        print(json.dumps(measure(train_dir, args.child, args.steps, args.precision, not args.no_model)))
        return

    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    decode_s = 0.0
    for _ in range(args.rounds):
        for kind in KINDS:
            r = child(train_dir, kind, args.steps, args.precision, model=True)
            rates[kind].append(r["rate"])
            decode_s = max(decode_s, r["decode_s"])
    alone = {k: child(train_dir, k, args.steps, args.precision, model=False)["rate"] for k in ("ours", "baseline")}
    med = {k: statistics.median(v) for k, v in rates.items()}

    import tensorflow as tf  # noqa: PLC0415

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"TensorFlow {tf.__version__}, GPU: {bool(tf.config.list_physical_devices('GPU'))}")
    print(f"model: notebook CNN ({args.precision}), batch {BATCH}; median of {args.rounds} alternating "
          f"rounds, {args.steps} timed steps each, one process per measurement")
    for kind in KINDS:
        print(f"{LABELS[kind]:34s} {med[kind]:8.1f} images/s  (rounds: "
              f"{', '.join(f'{r:.0f}' for r in rates[kind])})")
    # The model alone runs, process to process, at one of two rates on shared 2-core machines
    # (docs/benchmarks.md); its fastest round is the ceiling, not its median.
    print(f"ratio: {med['ours'] / med['baseline']:.2f}x  (ceiling set by the model alone, fastest round: "
          f"{max(rates['model']) / med['baseline']:.2f}x)")
    print(f"input pipeline alone (no model): ImageDataGenerator {alone['baseline']:.1f} images/s, "
          f"tf.data {alone['ours']:.1f} images/s, ratio {alone['ours'] / alone['baseline']:.2f}x")
    print(f"one-time decode of the train images (tf.data pipeline): {decode_s:.1f} s")
    per_epoch = 150 * BATCH
    print(f"25 x 150-step epochs: ImageDataGenerator {25 * per_epoch / med['baseline'] / 60:.1f} min, "
          f"tf.data {(25 * per_epoch / med['ours'] + decode_s) / 60:.1f} min including decode")


if __name__ == "__main__":
    main()
