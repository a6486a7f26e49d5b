"""Which validation defects set a bundle's threshold under the line rule (validation only, never test).

    .venv/bin/python bench/threshold_setters.py [BUNDLE] [--data DIR] [--lowest 4]

The bundle judged as the edge judges (int8, views, guard) on its validation images, plain and
under each of the 14 line conditions; per set, the lowest-scoring defects (faults score 1.0: a
reject) and how many good parts score at or above the bundle's threshold and above 0.2. Shows
what the cost:20 rule trades: where a few defects score near zero under the conditions, the
threshold must go below them, and the good parts between it and the rest of the defects are
rejected.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge
from edge.offline import evaluate
from edge.offline.dataset import default_data_root
from trainer.compare import validation_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", default=str(bundle_fmt.DEFAULT_BUNDLE))
    ap.add_argument("--data", default=str(default_data_root()))
    ap.add_argument("--lowest", type=int, default=4)
    args = ap.parse_args()
    b = bundle_fmt.load(Path(args.bundle))
    val = validation_of([b], Path(args.data))
    judge = Judge.from_bundle(b)
    sets = evaluate.judge_sets(judge, val.images, val.labels, evaluate.condition_images(val.images))
    defects, good = np.flatnonzero(val.labels == 1), np.flatnonzero(val.labels == 0)
    print(f"{args.bundle} ({b.short_id}) at threshold {b.threshold:.6g}: {len(val.labels)} validation parts, "
          f"{len(defects)} defects")
    print(f"{'set':15s} | lowest-scoring defects | good >= threshold | good >= 0.2")
    for s in sets:
        low = defects[np.argsort(s.scores[defects], kind="stable")[:args.lowest]]
        named = ", ".join(f"{val.paths[i].stem} {s.scores[i]:.4f}" for i in low)
        print(f"{s.name:15s} | {named} | {int((s.scores[good] >= b.threshold).sum())} | "
              f"{int((s.scores[good] >= 0.2).sum())}")


if __name__ == "__main__":
    main()
