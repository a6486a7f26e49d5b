"""How small and faint a pinhole a bundle catches: its detection limit on synthetic pits.

    .venv/bin/python bench/pit_detection.py [BUNDLE] [--data DIR] [--depths 0.15,0.3,0.45,0.6]
                                           [--sigmas 0.7,1.0,1.5,2.2] [--seed 0]

Every good part of the bundle's validation split (never trained on) gets one pit on its flange
(trainer.synth, no other change), at each depth (share of the metal's grey it darkens) and size
(Gaussian sigma in pixels; about 2.4 sigma across at half depth), and is judged as the edge judges
it (int8, the bundle's views, guard and threshold). Prints the share rejected per cell against the
clean parts' share: the pits a plant can expect the line to catch, and the figure a model aimed at
pinholes must raise (docs/training.md: the two validation pinholes are about 16% deep, sigma ~1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge
from edge.offline.dataset import default_data_root
from trainer.compare import validation_of
from trainer.synth import draw_pits

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)  # output pixel = source pixel


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def rejected(judge: Judge, images: np.ndarray) -> float:
    """Share of the parts not accepted (a reject or a fault: either keeps the part off the order)."""
    return float(np.mean([j.decision != "accept" for j in judge.judge_all(images)]))


def pitted(images: np.ndarray, circles: np.ndarray, depth: float, sigma: float, seed: int) -> np.ndarray:
    n = len(images)
    out = draw_pits(tf.constant(images[..., None], tf.float32), tf.ones([n], tf.bool), tf.constant(circles),
                    tf.constant(np.tile(np.array(IDENTITY, np.float32), (n, 1))), tf.constant([seed, 1], tf.int64),
                    sigma_range=(sigma, sigma), depth_range=(depth, depth))
    return np.clip(np.round(out.numpy()[..., 0]), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", type=Path, default=Path("models/casting-cnn"))
    ap.add_argument("--data", type=Path, default=None, help="the bundle's training data (default: the dataset)")
    ap.add_argument("--depths", type=floats, default=floats("0.15,0.3,0.45,0.6"))
    ap.add_argument("--sigmas", type=floats, default=floats("0.7,1.0,1.5,2.2"))
    ap.add_argument("--seed", type=int, default=0, help="where on each flange the pits go")
    args = ap.parse_args()
    bundle = bundle_fmt.load(args.bundle)
    val = validation_of([bundle], args.data or default_data_root())
    good = val.images[val.labels == 0]
    judge = Judge.from_bundle(bundle)
    circles = np.array([[c.cx, c.cy, c.r, 0.0] for c in (judge.rim(img) for img in good)], np.float32)
    t = time.perf_counter()
    clean = rejected(judge, good)
    print(f"{bundle.path} ({bundle.short_id}), threshold {bundle.threshold}, {judge.classifier.spec.views} view(s): "
          f"{len(good)} good validation parts, clean {100 * clean:.1f}% rejected")
    print("share rejected with one pit of depth (rows) and sigma px (columns):")
    print("depth  " + "".join(f"{s:>9.1f}" for s in args.sigmas))
    for d in args.depths:
        row = [rejected(judge, pitted(good, circles, d, s, args.seed)) for s in args.sigmas]
        print(f"{d:>5.2f}  " + "".join(f"{100 * r:>8.1f}%" for r in row))
    print(f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
