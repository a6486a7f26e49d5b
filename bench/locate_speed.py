"""Locator speed and accuracy on simulated 1280x720 line frames, on one core.

    .venv/bin/python bench/locate_speed.py [--data DIR] [--frames 120] [--threads 1]

Renders dataset parts (synthetic ones if the dataset is absent) onto the belt at random
positions, rim diameters 150..600 px, any rotation, exposure +-15%, blur sigma 0..1.5,
then times `find_parts` and `crop_part` per frame (rendering excluded) and prints the
rim errors against the placed truth. Empty-belt frames are timed too.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from edge.offline.dataset import default_data_root
from edge.vision.locate import LocateConfig, crop_part, find_parts
from edge.vision.simulate import belt, camera, place_part


def _parts(data: Path, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    files = sorted(data.glob("test/*_front/*.jpeg"))
    if files:
        return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in rng.choice(files, n, replace=False)]
    print(f"dataset not found under {data}: synthetic parts")
    from tests.conftest import part_image

    return [part_image(i, defect=bool(i % 2)) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data_root())
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads (1: one core)")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    cfg = LocateConfig()
    bg = belt()
    parts = _parts(args.data, min(args.frames, 60), rng)
    t_find, t_crop, t_empty, scale, centre, misses = [], [], [], [], [], 0
    for k in range(args.frames):
        d = rng.uniform(cfg.min_diameter + 5, cfg.max_diameter - 5)
        r = d / 2
        cx = rng.uniform(r + 2, bg.shape[1] - r - 3)
        cy = rng.uniform(r + 2, bg.shape[0] - r - 3) if bg.shape[0] - 2 * r > 6 else (bg.shape[0] - 1) / 2
        frame = place_part(bg, parts[k % len(parts)], cx, cy, d, rng.uniform(0, 360))
        noise = rng.normal(0, 2.0, frame.shape).astype(np.float32)
        frame = camera(frame, gain=rng.uniform(0.85, 1.15), blur_sigma=rng.uniform(0, 1.5), noise=noise)
        t0 = time.perf_counter()
        boxes = find_parts(frame, cfg)
        t1 = time.perf_counter()
        if len(boxes) != 1:
            misses += 1
            continue
        crop_part(frame, boxes[0])
        t2 = time.perf_counter()
        t_find.append(t1 - t0)
        t_crop.append(t2 - t1)
        scale.append(abs(2 * boxes[0].radius / d - 1))
        centre.append(np.hypot(boxes[0].cx - cx, boxes[0].cy - cy) / d)
    for k in range(20):
        frame = camera(belt(seed=k + 1), noise=rng.normal(0, 3.0, bg.shape).astype(np.float32))
        t0 = time.perf_counter()
        find_parts(frame, cfg)
        t_empty.append(time.perf_counter() - t0)

    def ms(xs: list[float]) -> str:
        a = np.array(xs) * 1e3
        return f"median {np.median(a):.2f} ms, p95 {np.percentile(a, 95):.2f} ms, max {a.max():.2f} ms"

    print(f"{platform.processor() or platform.machine()}, cv2 {cv2.__version__}, {args.threads} thread(s), 1280x720")
    print(f"find_parts, one part : {ms(t_find)}  ({len(t_find)} frames, {misses} not exactly one part)")
    print(f"find_parts, empty    : {ms(t_empty)}")
    print(f"crop_part            : {ms(t_crop)}")
    print(f"rim diameter error   : max {max(scale):.2%}, mean {np.mean(scale):.2%}")
    print(f"centre error / diam. : max {max(centre):.2%}, mean {np.mean(centre):.2%}")


if __name__ == "__main__":
    main()
