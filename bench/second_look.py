"""What the guard's second look at the rim changes, on a bundle's validation images (never test).

    .venv/bin/python bench/second_look.py [BUNDLE] [--data DIR]

The bundle judged twice as the edge judges (int8, views, guard), without and with the second look
(edge.inference.judge): the line-condition rule's summed cost (plain + 14 line conditions, the
threshold chosen again by cost:20 over them, trainer.lineval), the good and defective parts on the
7 belts (identical decisions, faults), the guard on the clean parts and on the same parts covered
a third to a half (hand, glove, tool), and the time of a verdict that takes the second look.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge
from edge.offline import evaluate
from edge.offline.conditions import BACKDROPS, apply
from edge.offline.dataset import default_data_root
from trainer.compare import validation_of
from trainer.lineval import rule_threshold
from trainer.threshold import Policy


def figures(judge: Judge, images: np.ndarray, labels: np.ndarray, changed: dict[str, np.ndarray],
            belts: dict[str, np.ndarray]) -> dict:
    sets = evaluate.judge_sets(judge, images, labels, changed)
    t, summary = rule_threshold(sets, Policy("cost", 20.0), 20.0, judge.classifier.spec.output)
    judge.threshold = t
    plain = judge.judge_all(images)
    same, faults = [], 0
    for imgs in belts.values():
        js = judge.judge_all(imgs)
        same.append([a.decision == b.decision for a, b in zip(plain, js, strict=True)])
        faults += sum(j.fault is not None for j in js)
    guard = evaluate.guard_figures(judge, images[labels == 0])
    return {"threshold": t, "summed_cost": summary["summed_cost"], "escapes": summary["escapes_total"],
            "belts_identical": float(np.array(same).all(axis=0).mean()), "belt_faults": faults, "guard": guard}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", type=Path, default=Path("models/casting-cnn"))
    ap.add_argument("--data", type=Path, default=None, help="the bundle's training data (default: the dataset)")
    args = ap.parse_args()
    bundle = bundle_fmt.load(args.bundle)
    val = validation_of([bundle], args.data or default_data_root())
    t0 = time.perf_counter()
    changed = evaluate.condition_images(val.images)
    belts = {c.name: apply(val.images, c, 0) for c in BACKDROPS}
    out = {}
    for look in (False, True):
        judge = Judge.from_bundle(bundle)
        judge.second_look = look
        out[look] = figures(judge, val.images, val.labels, changed, belts)
    print(f"{bundle.path} on {len(val.labels)} validation parts ({int(val.labels.sum())} defects), "
          f"{time.perf_counter() - t0:.0f} s")
    print("second look | rule threshold | summed cost (escapes) | identical on 7 belts | belt faults | "
          "clean faults | covered faulted | covered accepted")
    for look, f in out.items():
        g = f["guard"]
        print(f"{'on ' if look else 'off'}         | {f['threshold']:.6g} | {f['summed_cost']:g} ({f['escapes']}) | "
              f"{100 * f['belts_identical']:.2f}% | {f['belt_faults']} | {g['clean_faults']} of {g['clean_parts']} | "
              f"{g['covered_faulted']} of {g['covered_parts']} ({100 * g['covered_fault_rate']:.2f}%) | "
              f"{g['covered_accepted']}")
    # the time of a verdict that takes the second look: a faulted part on the light belt
    judge = Judge.from_bundle(bundle)
    judge.second_look = True
    light = belts["grey_230"] if "grey_230" in belts else next(iter(belts.values()))
    first = Judge.from_bundle(bundle)  # without the second look: which parts would take it
    slow = [img for img in light[:400] if first.judge(img).fault == "unfamiliar"][:20]
    if slow:
        times = []
        for img in slow * 3:
            t = time.perf_counter()
            judge.judge(img)
            times.append(time.perf_counter() - t)
        print(f"a verdict with the second look: median {1000 * float(np.median(times)):.2f} ms "
              f"({len(slow)} parts the light belt made unfamiliar, one core)")


if __name__ == "__main__":
    main()
