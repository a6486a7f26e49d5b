"""Per-part inference time on one core: the model alone against the whole verdict.

    .venv/bin/python bench/judge_latency.py [--model BUNDLE] [--data DIR] [--parts 60] [--repeats 5]

The verdict (edge.inference.judge) = rim found on the crop, guard, part-only mask, every test-time
view, threshold. Timed on dataset test crops (synthetic ones if the dataset is absent),
each stage separately and together, for every view count a bundle may choose (1, 2, 4, 8). Prints
medians and p99, and each figure as a ratio to the model alone measured in the same run.
Target (issue 17): the bundle's own configuration within 3 ms per part on one core.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.guard import Guard, GuardLimits
from edge.inference.judge import Judge
from edge.inference.model import Classifier
from edge.offline.dataset import default_data_root
from edge.vision.partview import VIEW_CHOICES, part_only_input
from edge.vision.preprocess import load_image


def _crops(data: Path, n: int) -> list[np.ndarray]:
    files = sorted(data.glob("test/*_front/*.jpeg"))
    if files:
        rng = np.random.default_rng(0)
        return [load_image(f) for f in rng.choice(files, min(n, len(files)), replace=False)]
    print(f"dataset not found under {data}: synthetic parts")
    from tests.conftest import part_image

    return [part_image(i, defect=bool(i % 2)) for i in range(n)]


def _time(fn, crops: list[np.ndarray], repeats: int) -> np.ndarray:
    for c in crops[:5]:
        fn(c)
    out = []
    for _ in range(repeats):
        for c in crops:
            t = time.perf_counter()
            fn(c)
            out.append(time.perf_counter() - t)
    return np.array(out) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=bundle_fmt.DEFAULT_BUNDLE)
    ap.add_argument("--data", type=Path, default=default_data_root())
    ap.add_argument("--parts", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    b = bundle_fmt.load(args.model)
    crops = _crops(args.data, args.parts)
    judge = Judge.from_bundle(b, num_threads=1)
    spec = judge.classifier.spec
    raw = Classifier(b.model_path, num_threads=1)  # the model alone, no mask, one view
    limits = GuardLimits.from_meta(b.meta)
    guard = Guard(limits) if limits else None
    circles = {id(c): spec.rim(c) for c in crops}
    rows: list[tuple[str, np.ndarray]] = [
        ("model alone (1 view, no mask)", _time(raw.model_p, crops, args.repeats)),
        (f"rim on the crop ({spec.finder})", _time(spec.rim, crops, args.repeats)),
    ]
    if spec.part_only:
        rows.append(("part-only mask", _time(lambda c: part_only_input(c, spec, circles[id(c)]), crops, args.repeats)))
    if guard:
        rows.append(("guard", _time(lambda c: guard.check(c, circles[id(c)]), crops, args.repeats)))
    for views in VIEW_CHOICES:
        j = Judge(Classifier(b.model_path, num_threads=1, spec=replace(spec, views=views)), judge.threshold, guard)
        mark = " (the bundle's)" if views == spec.views else ""
        rows.append((f"whole verdict, {views} view(s){mark}", _time(j.judge, crops, args.repeats)))
    base = float(np.median(rows[0][1]))
    print(f"{b.path} ({b.short_id}), views {spec.views}, part_only {spec.part_only}, guard {guard is not None}; "
          f"{len(crops)} crops x {args.repeats}; {platform.processor() or platform.machine()}, one thread")
    print(f"{'stage':42s} {'median ms':>10s} {'p99 ms':>8s} {'x model':>8s}")
    for name, t in rows:
        med = float(np.median(t))
        print(f"{name:42s} {med:10.3f} {float(np.percentile(t, 99)):8.3f} {med / base:8.2f}")


if __name__ == "__main__":
    main()
