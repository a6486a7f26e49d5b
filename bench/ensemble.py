"""Would two models, 2 views each, beat the shipped bundle's 4 views? (docs/training.md,
"Measurement of a two-model ensemble"). Validation only: the line rule's summed cost over the
plain and 14 line-condition sets, each configuration's threshold chosen again over all 15.

    .venv/bin/python bench/ensemble.py [PARTNER_BUNDLE]   (default runs/line-pinhole2; about 2 min)

The shipped bundle's guard decides faults for all three (a fault is a reject, score 1.0), and
every model sees the same rims; each model's 2-view logit mean is averaged in logit space, a
p_defect output floored at 1/512 as the edge floors it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge
from edge.inference.model import Classifier
from edge.inference.policy import Policy, choose
from edge.offline import evaluate
from edge.offline.dataset import default_data_root
from edge.vision.partview import logits
from trainer.compare import cost, validation_of

RATIO = 20.0


def _with_views(clf: Classifier, tflite: bytes, views: int) -> Classifier:
    return Classifier(tflite, num_threads=1, spec=replace(clf.spec, views=views))


def main() -> None:
    shipped = bundle_fmt.load(Path("models/casting-cnn"))
    partner = bundle_fmt.load(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/line-pinhole2"))
    val = validation_of([shipped, partner], default_data_root())
    whole = Judge.from_bundle(shipped)
    two = Judge(_with_views(whole.classifier, (shipped.path / "model.tflite").read_bytes(), 2), shipped.threshold,
                whole.guard)
    other = Classifier.from_bundle(partner)
    other = _with_views(other, (partner.path / "model.tflite").read_bytes(), 2)
    if (other.spec.finder, other.spec.margin, other.spec.fill) != (two.classifier.spec.finder,
                                                                   two.classifier.spec.margin,
                                                                   two.classifier.spec.fill):
        raise SystemExit(f"{partner.path}: another part-only input than the shipped bundle's; not comparable")
    floor = {"logit": 1e-7, "p_defect": 1 / 512}
    sets = {"plain": val.images, **evaluate.condition_images(val.images)}
    scores: dict[str, dict[str, np.ndarray]] = {"shipped bundle, 4 views": {}, "shipped weights, 2 views": {},
                                                f"ensemble with {partner.path.name}, 2 + 2 views": {}}
    for name, images in sets.items():
        rims = [two.rim(x) for x in images]
        judged = two.judge_all(images, rims)
        fault = np.array([j.fault is not None for j in judged])
        p_two = np.array([j.p_defect for j in judged])
        p_other = other.predict(images, rims)
        mean = (logits(p_two, floor[two.classifier.spec.output]) + logits(p_other, floor[other.spec.output])) / 2
        four = np.array([1.0 if j.fault else j.p_defect for j in whole.judge_all(images, rims)])
        for key, s in zip(scores, (four, np.where(fault, 1.0, p_two), np.where(fault, 1.0, 1 / (1 + np.exp(-mean))))):
            scores[key][name] = s
    labels = np.concatenate([val.labels] * len(sets))
    for key, per_set in scores.items():
        t = choose(labels, np.concatenate(list(per_set.values())), Policy("cost", RATIO), "logit")
        per = {n: cost(val.labels, s, t, RATIO) for n, s in per_set.items()}  # (cost, escapes, good rejected)
        print(f"{key}: threshold {t:.6g}, summed cost {sum(c for c, _, _ in per.values()):g} "
              f"({sum(fa for _, fa, _ in per.values())} escapes)")
        print("    " + ", ".join(f"{n} {c:g}" for n, (c, _, _) in per.items()))


if __name__ == "__main__":
    main()
