"""Write a simulated new line: the base bundle's validation images as another line would see them.

    .venv/bin/python bench/simulated_line.py LINE --out runs/simline-LINE [--model BUNDLE] [--data DIR]

For designing commissioning rules (docs/commissioning.md, "threshold rule study") on data that is
neither `casting_512_dark` nor test: the base never trained on its validation split, so these are
unseen parts, under a composition of line conditions (edge.offline.conditions) far enough from the
dataset's capture that the base loses parts there. Writes `def_front/` and `ok_front/` JPEGs
(quality 95) under --out, which must be outside the repository or in the ignored `runs/`: they are
copies of the dataset's images and are never committed. Prints the base's figures on it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge, reject_scores
from edge.offline.conditions import jpeg, lighting, motion, on_backdrop, reframe
from edge.offline.dataset import CLASS_NAMES, default_data_root
from edge.offline.metrics import summarize
from edge.offline.perturb import blur, sharpen
from trainer.compare import validation_of

Line = Callable[[np.ndarray, int], np.ndarray]

# Each a whole capture set-up, not one condition: lighting, focus, framing and belt together.
LINES: dict[str, Line] = {
    "dim-soft": lambda g, s: jpeg(reframe(blur(lighting(g, gain=0.8, gamma=1.5), 1.6), 1.1), 50),
    "bright-belt": lambda g, s: sharpen(reframe(lighting(on_backdrop(g, 210), gain=1.2, gamma=0.85), 0.94), 0.8),
    "woven-motion": lambda g, s: lighting(motion(on_backdrop(g, 100, "woven", s), 6.0,
                                                 float(np.random.default_rng(s).uniform(0, 180))),
                                          gain=0.85, gamma=1.2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("line", choices=sorted(LINES))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=bundle_fmt.DEFAULT_BUNDLE)
    ap.add_argument("--data", type=Path, default=default_data_root())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = bundle_fmt.load(args.model)
    val = validation_of([base], args.data)
    fn = LINES[args.line]
    out = np.stack([fn(img, args.seed + i) for i, img in enumerate(val.images)])
    for cls in CLASS_NAMES:
        (args.out / cls).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(out, val.labels)):
        cv2.imwrite(str(args.out / CLASS_NAMES[int(label)] / f"{args.line}_{i:04d}.jpeg"), img,
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    s = summarize(val.labels, reject_scores(Judge.from_bundle(base).judge_all(out)), base.threshold)
    print(f"{args.out}: {len(out)} images ({int(val.labels.sum())} defect); base {base.short_id} there: "
          f"{100 * s['accuracy']:.2f}%, {s['false_accepts']} defects accepted, {s['false_rejects']} good rejected")


if __name__ == "__main__":
    main()
