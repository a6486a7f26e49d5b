"""Replay throughput on the 715 test images, against the notebook's way and the bare loop.

    .venv/bin/python bench/replay_throughput.py [--model BUNDLE] [--data DIR] [--keras-images 150]

Measured in one run, all on the same files (the OS page cache is warmed first):
- replay: `edge.offline.replay.replay` (what `edge-inspect --replay` runs), all cores;
- bare loop: cv2.imread + interpreter invoke, nothing else, one thread per core (the limit);
- bare loop on one thread;
- Keras per image: float model, `model.predict(x[None])` per image (the notebook's way),
  on the first --keras-images images (it is slow), decoding included;
- Keras batched: `model.predict` on all images at batch 64, decoding included.
Peak RSS of a separate `edge-inspect --replay` process is measured too.
Needs the `train` extra for the Keras rows (skipped otherwise).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from daemon_latency import proc_mb

from edge.inference import bundle as bundle_fmt
from edge.inference.model import Classifier
from edge.offline.dataset import default_data_root, list_labelled
from edge.offline.replay import replay

ROOT = Path(__file__).resolve().parent.parent


def bare_loop(paths: list[Path], b: bundle_fmt.Bundle, workers: int) -> float:
    def work(chunk: list[Path]) -> None:
        clf = Classifier(b.model_path, num_threads=1)
        for p in chunk:
            clf.raw_output(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))

    chunks = [paths[i::workers] for i in range(workers)]
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, chunks))
    return len(paths) / (time.perf_counter() - t)


def keras_rates(paths: list[Path], b: bundle_fmt.Bundle, per_image_n: int) -> tuple[float, float] | None:
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras
    except ImportError:
        return None
    model = keras.models.load_model(b.path / b.meta.get("float_model", "model.keras"))

    def load(p: Path) -> np.ndarray:
        return cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(np.float32)[None, :, :, None]

    model.predict(load(paths[0]), verbose=0)
    t = time.perf_counter()
    for p in paths[:per_image_n]:
        model.predict(load(p), verbose=0)
    per_image = per_image_n / (time.perf_counter() - t)
    t = time.perf_counter()
    x = np.concatenate([load(p) for p in paths])
    model.predict(x, batch_size=64, verbose=0)
    batched = len(paths) / (time.perf_counter() - t)
    return per_image, batched


def replay_peak_rss_mb(folder: Path, model: Path) -> float:
    """Peak RSS (VmHWM) of a separate `edge-inspect --replay` process, sampled until it exits.

    Not getrusage(RUSAGE_CHILDREN): a child forked from this process (which has Keras
    loaded by then) would be charged this process's pages until it execs.
    """
    cmd = [sys.executable, "-m", "edge.cli", "--replay", str(folder), "--model", str(model), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, proc_mb(proc.pid) or 0.0)
        time.sleep(0.01)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=bundle_fmt.DEFAULT_BUNDLE)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--keras-images", type=int, default=150)
    ap.add_argument("--repeat", type=int, default=3, help="take the best of N runs for each row")
    args = ap.parse_args()
    folder = (args.data or default_data_root()) / "test"
    b = bundle_fmt.load(args.model)
    paths = [s.path for s in list_labelled(folder)]
    cores = os.cpu_count() or 1
    for p in paths:  # warm the page cache so every row reads from memory
        p.read_bytes()

    def best(fn) -> float:  # noqa: ANN001
        return max(fn() for _ in range(args.repeat))

    rows = {
        "replay (edge-inspect --replay)": best(lambda: replay(folder, b).summary["images_per_s"]),
        f"bare loop, {cores} threads": best(lambda: bare_loop(paths, b, cores)),
        "bare loop, 1 thread": best(lambda: bare_loop(paths, b, 1)),
    }
    k = keras_rates(paths, b, args.keras_images)
    if k:
        rows["Keras float, model.predict per image"] = k[0]
        rows["Keras float, model.predict batch 64"] = k[1]
    rss = replay_peak_rss_mb(folder, args.model)

    print(f"machine: {platform.machine()} {platform.processor()}, {cores} cores, Python {platform.python_version()}")
    print(f"bundle: {b.path} ({b.meta['architecture']}, sha256 {b.short_id}); {len(paths)} images")
    for name, rate in rows.items():
        print(f"{name:40s} {rate:9.1f} images/s")
    r = rows["replay (edge-inspect --replay)"]
    print(f"replay / bare loop ({cores} threads): {r / rows[f'bare loop, {cores} threads']:.2f}")
    if k:
        print(f"replay / Keras per image: {r / k[0]:.1f}x   replay / Keras batched: {r / k[1]:.1f}x")
    print(f"peak RSS of edge-inspect --replay: {rss:.0f} MB")


if __name__ == "__main__":
    main()
