"""How a bundle holds up beyond its plain test split: line conditions, belts, covers.

Shared by `edge-train fit` (on validation, where the threshold and the model are chosen,
and on test, where they are only reported) and `edge-inspect --replay --conditions`.
Every figure comes from edge.inference.judge, the path the daemon decides by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.inference.judge import Judge, Judgement, reject_scores
from edge.offline import conditions
from edge.offline.metrics import summarize
from edge.offline.occlude import KINDS, cover
from edge.vision.partview import Circle, drawing_rim

COVER_SHARE = (1 / 3, 0.5)  # covers hide a third to a half of the part's disk


@dataclass(frozen=True)
class SetResult:
    name: str
    labels: np.ndarray
    judgements: list[Judgement]

    @property
    def scores(self) -> np.ndarray:
        return reject_scores(self.judgements)

    @property
    def p(self) -> np.ndarray:
        return np.array([j.p_defect for j in self.judgements], np.float64)

    def faults(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in self.judgements:
            if j.fault:
                out[j.fault] = out.get(j.fault, 0) + 1
        return out


def cost(labels: np.ndarray, scores: np.ndarray, threshold: float, ratio: float) -> dict[str, Any]:
    """Escapes (defects accepted), false rejects (good parts rejected) and R x escapes + false rejects."""
    reject = scores >= threshold
    escapes = int(((labels == 1) & ~reject).sum())
    false_rejects = int(((labels == 0) & reject).sum())
    good = int((labels == 0).sum())
    return {"n": int(len(labels)), "escapes": escapes, "false_rejects": false_rejects,
            "false_reject_rate": round(false_rejects / good, 5) if good else None,
            "cost": ratio * escapes + false_rejects}


def condition_images(images: np.ndarray, seed: int = 0,
                     which: tuple[conditions.Named, ...] = conditions.LINE_CONDITIONS) -> dict[str, np.ndarray]:
    """Each line condition applied to the images (seeded): made once, judged by as many models as asked."""
    return {cond.name: conditions.apply(images, cond, seed) for cond in which}


def judge_sets(judge: Judge, images: np.ndarray, labels: np.ndarray, changed: dict[str, np.ndarray],
               circles: list[Circle] | None = None) -> list[SetResult]:
    """The plain images (`circles`: their rims, where known) and each changed set, judged."""
    out = [SetResult("plain", labels, judge.judge_all(images, circles))]
    out += [SetResult(name, labels, judge.judge_all(imgs)) for name, imgs in changed.items()]
    return out


def line_sets(judge: Judge, images: np.ndarray, labels: np.ndarray, seed: int = 0,
              circles: list[Circle] | None = None,
              which: tuple[conditions.Named, ...] = conditions.LINE_CONDITIONS) -> list[SetResult]:
    """The plain images and each line condition applied to them (seeded), judged."""
    return judge_sets(judge, images, labels, condition_images(images, seed, which), circles)


def summarise_sets(sets: list[SetResult], threshold: float, ratio: float) -> dict[str, Any]:
    """Per set: cost figures and faults; and the sum and worst case over the line conditions."""
    table = {s.name: {**cost(s.labels, s.scores, threshold, ratio), "faults": s.faults()} for s in sets}
    line = [v for k, v in table.items() if k != "plain"]
    return {"sets": table,
            "summed_cost": float(sum(v["cost"] for v in table.values())),
            "worst_condition_cost": float(max((v["cost"] for v in line), default=0.0)),
            "escapes_total": int(sum(v["escapes"] for v in table.values())),
            "worst_false_reject_rate": max((v["false_reject_rate"] or 0.0 for v in table.values()), default=0.0)}


def backdrop_spread(judge: Judge, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The same parts on every belt of conditions.BACKDROPS: decisions against the plain image's,
    and the spread (max - min) of each part's p_defect over the belts."""
    plain = judge.judge_all(images)
    per_belt: dict[str, list[Judgement]] = {}
    for cond in conditions.BACKDROPS:
        per_belt[cond.name] = judge.judge_all(conditions.apply(images, cond, seed))
    p = np.array([[j.p_defect for j in plain]] + [[j.p_defect for j in js] for js in per_belt.values()])
    same = np.array([[a.decision == b.decision for a, b in zip(plain, js, strict=True)] for js in per_belt.values()])
    spread = p.max(axis=0) - p.min(axis=0)
    all_same = same.all(axis=0)
    return {
        "belts": [c.name for c in conditions.BACKDROPS],
        "parts": int(len(images)),
        "identical_decisions_all_belts": round(float(all_same.mean()), 5) if len(images) else None,
        "identical_decisions_per_belt": {k: round(float(v.mean()), 5) for k, v in zip(per_belt, same, strict=True)},
        "escapes_per_belt": {k: int(sum(j.decision == "accept" for j, y in zip(js, labels, strict=True) if y == 1))
                             for k, js in per_belt.items()},
        "p_spread": {"median": round(float(np.median(spread)), 5), "p95": round(float(np.quantile(spread, 0.95)), 5),
                     "max": round(float(spread.max()), 5)} if len(images) else None,
        "spread_per_part": spread,
    }


def covered(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Each image under a cover (hand, glove, tool in turn) hiding a third to a half of the part."""
    rng = np.random.default_rng(seed)
    out, shares, kinds = [], [], []
    for i, img in enumerate(images):
        kind = KINDS[i % len(KINDS)]
        im, share = cover(img, float(rng.uniform(*COVER_SHARE)), kind, seed + i, drawing_rim(img))
        out.append(im)
        shares.append(share)
        kinds.append(kind)
    return (np.stack(out) if out else images.copy()), np.array(shares), kinds


def guard_figures(judge: Judge, clean: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Guard false alarms on clean parts and misses on the same parts covered."""
    clean_j = judge.judge_all(clean)
    imgs, shares, kinds = covered(clean, seed)
    cov_j = judge.judge_all(imgs)
    faulted = np.array([j.fault is not None for j in cov_j])
    by_kind = {}
    for k in KINDS:
        sel = np.array([kk == k for kk in kinds])
        if sel.any():
            by_kind[k] = {"parts": int(sel.sum()), "faulted": int(faulted[sel].sum()),
                          "accepted": int(sum(j.decision == "accept" for j, s in zip(cov_j, sel, strict=True) if s))}
    clean_faults = [j for j in clean_j if j.fault]
    return {
        "clean_parts": len(clean_j), "clean_faults": len(clean_faults),
        "clean_fault_rate": round(len(clean_faults) / len(clean_j), 5) if clean_j else None,
        "covered_parts": len(cov_j), "covered_share": [round(float(shares.min()), 3), round(float(shares.max()), 3)]
        if len(shares) else None,
        "covered_faulted": int(faulted.sum()),
        "covered_fault_rate": round(float(faulted.mean()), 5) if len(cov_j) else None,
        "covered_accepted": int(sum(j.decision == "accept" for j in cov_j)),
        "by_kind": by_kind,
    }


def plain_summary(judgements: list[Judgement], labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """edge.offline.metrics.summarize of what was decided (a fault counts as a reject)."""
    return summarize(labels, reject_scores(judgements), threshold)
