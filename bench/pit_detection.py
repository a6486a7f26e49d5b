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

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge
from edge.offline.dataset import default_data_root
from trainer.compare import validation_of
from trainer.synth import detection


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


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
    t = time.perf_counter()
    table = detection(judge, good, [judge.rim(img) for img in good], args.depths, args.sigmas, args.seed)
    print(f"{bundle.path} ({bundle.short_id}), threshold {bundle.threshold}, {judge.classifier.spec.views} view(s): "
          f"{len(good)} good validation parts, clean {100 * table['clean_rejected']:.1f}% rejected")
    print("share rejected with one pit of depth (rows) and sigma px (columns):")
    print("depth  " + "".join(f"{s:>9.1f}" for s in args.sigmas))
    for d, row in table["rejected"].items():
        print(f"{float(d):>5.2f}  " + "".join(f"{100 * r:>8.1f}%" for r in row.values()))
    print(f"({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()
