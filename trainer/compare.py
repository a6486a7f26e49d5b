"""`edge-train compare`: champion against challenger on their validation images, never test.

Replacing a shipped model is decided on validation, and on this dataset a handful of hard
validation defects set each model's threshold, so one model's validation cost can beat
another's by luck. The comparison therefore also resamples the validation images
(stratified bootstrap, both models on the same resamples, each threshold chosen again by
its own policy) and reports how often the challenger costs less, as much, or more.
Needs no TensorFlow: the bundles run on LiteRT, as on the line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge, reject_scores
from edge.offline.dataset import (
    file_digests,
    fingerprint,
    first_per_class,
    list_labelled,
    load_samples,
    stratified_split,
)
from edge.offline.perturb import FOCUS_CHANGES, refocus_all
from trainer.threshold import Policy, choose, parse_policy

log = logging.getLogger(__name__)


class CompareError(ValueError):
    """The two bundles cannot be compared as asked; the message says why."""


@dataclass(frozen=True)
class Validation:
    images: np.ndarray
    labels: np.ndarray
    fingerprint: str
    source: str = "validation"  # "validation" (split of the training data) or "labelled" (a new line's folder)
    paths: tuple[Path, ...] = ()  # each image's file, in order


def split_of(meta: dict[str, Any]) -> tuple[int, float, int | None]:
    opts = meta.get("training", {}).get("options", {})
    # Before --split-seed existed (2026-11-26), --seed drove the split.
    return int(opts.get("split_seed", opts.get("seed", 123))), float(opts.get("val_fraction", 0.2)), opts.get("limit")


def validation_of(bundles: list[bundle_fmt.Bundle], data: Path) -> Validation:
    """The validation images the bundles were judged on, rebuilt exactly as `fit` split them."""
    splits = {split_of(b.meta) for b in bundles}
    if len(splits) > 1:
        raise CompareError("the bundles were validated on different splits (split seed, validation fraction, "
                           f"limit): {sorted(splits, key=str)}; compare only bundles judged on the same images")
    split_seed, fraction, limit = splits.pop()
    samples = first_per_class(list_labelled(data / "train"), limit)
    loaded = load_samples(samples)
    _, val_idx = stratified_split(loaded.labels, fraction, split_seed)
    val_paths = {loaded.paths[i] for i in val_idx}
    val_samples = [s for s in samples if s.path in val_paths]
    fp = fingerprint(val_samples, data, file_digests(val_samples))
    for b in bundles:
        recorded = b.meta.get("training", {}).get("data", {}).get("validation_fingerprint")
        if recorded is None:
            log.warning("bundle records no validation fingerprint (trained before it existed): trusting its "
                        "split options", extra={"bundle": str(b.path)})
        elif recorded != fp:
            raise CompareError(f"{b.path}: its validation images (fingerprint {recorded[:12]}...) are not the "
                               f"ones under {data} (fingerprint {fp[:12]}...); point --data at its training data")
    return Validation(loaded.images[val_idx], loaded.labels[val_idx], fp,
                      paths=tuple(loaded.paths[i] for i in val_idx))


def labelled_folder(data: Path) -> Validation:
    """Every image of a labelled folder without train/ (a new line's, made by edge-label): both
    bundles judged on all of it, which neither was trained on (docs/commissioning.md)."""
    samples = list_labelled(data)
    loaded = load_samples(samples)
    fp = fingerprint(samples, data, file_digests(samples))
    return Validation(loaded.images, loaded.labels, fp, source="labelled", paths=tuple(loaded.paths))


def cost(labels: np.ndarray, p: np.ndarray, threshold: float, ratio: float) -> tuple[float, int, int]:
    """(ratio x false accepts + false rejects, false accepts, false rejects) at `threshold`."""
    defect = np.asarray(labels).astype(bool)
    fa = int(((p < threshold) & defect).sum())
    fr = int(((p >= threshold) & ~defect).sum())
    return ratio * fa + fr, fa, fr


def paired_bootstrap(labels: np.ndarray, choose_on: tuple[np.ndarray, np.ndarray],
                     measure_on: tuple[np.ndarray, np.ndarray], policies: tuple[Policy, Policy],
                     ratio: float, resamples: int, seed: int,
                     outputs: tuple[str, str] = ("p_defect", "p_defect")) -> dict[str, Any]:
    """Costs of models A and B on the same stratified resamples.

    On each resample each model's threshold is chosen again by its own policy from its
    `choose_on` scores and its cost counted on its `measure_on` scores: the same arrays for
    plain validation; the refocused images' scores when asking how a threshold chosen on
    the camera's usual images holds under another focus.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    costs = np.empty((2, resamples))
    unseen = np.empty((2, resamples))  # cost on the images the resample left out, per validation size
    escapes = np.zeros(2)
    for r in range(resamples):
        drawn = [rng.choice(c, len(c)) for c in classes]
        idx = np.concatenate(drawn)
        out = np.concatenate([np.setdiff1d(c, d) for c, d in zip(classes, drawn, strict=True)])
        y, y_out = labels[idx], labels[out]
        for m in range(2):
            t = choose(y, choose_on[m][idx], policies[m], outputs[m])
            costs[m, r] = cost(y, measure_on[m][idx], t, ratio)[0]
            c_out, fa_out, _ = cost(y_out, measure_on[m][out], t, ratio)
            unseen[m, r] = c_out * len(labels) / max(len(out), 1)
            escapes[m] += fa_out > 0

    def dist(c: np.ndarray) -> dict[str, float]:
        return {"median": float(np.median(c)), "p5": float(np.percentile(c, 5)), "p95": float(np.percentile(c, 95))}

    def versus(ca: np.ndarray, cb: np.ndarray) -> dict[str, float]:
        return {"b_lower": round(float(np.mean(cb < ca)), 4), "tie": round(float(np.mean(cb == ca)), 4),
                "b_higher": round(float(np.mean(cb > ca)), 4)}

    # In-sample: each threshold counted on the images it was chosen on, the best it could do
    # there. Out of bag: counted on the images it never saw (scaled to the validation size),
    # which also shows how often a threshold chosen this way lets an unseen defect through.
    return {"resamples": resamples, "seed": seed, "a": dist(costs[0]), "b": dist(costs[1]),
            **versus(costs[0], costs[1]),
            "out_of_bag": {"a": dist(unseen[0]), "b": dist(unseen[1]), **versus(unseen[0], unseen[1]),
                           "a_escape_rate": round(float(escapes[0] / resamples), 4),
                           "b_escape_rate": round(float(escapes[1] / resamples), 4)}}


def compare(champion: Path, challenger: Path, data: Path, ratio: float = 20.0, resamples: int = 2000,
            seed: int = 0, refocus: str | None = None) -> dict[str, Any]:
    """Everything `edge-train compare` reports, as a dict (also its --json)."""
    if refocus is not None and refocus not in FOCUS_CHANGES:
        raise CompareError(f"--refocus {refocus!r}: choose one of {', '.join(FOCUS_CHANGES)}")
    bundles = [bundle_fmt.load(champion), bundle_fmt.load(challenger)]
    val = validation_of(bundles, data) if (data / "train").is_dir() else labelled_folder(data)
    images = refocus_all(val.images, refocus) if refocus else val.images
    result: dict[str, Any] = {"validation": {"images": len(val.labels), "defects": int(val.labels.sum()),
                                             "fingerprint": val.fingerprint, "refocus": refocus,
                                             "source": val.source, "data": str(data)},
                              "cost_ratio": ratio, "models": {}}
    clean, measured, policies, outputs = [], [], [], []
    for role, b in zip(("champion", "challenger"), bundles):
        judge = Judge.from_bundle(b)  # as the edge decides: rim, guard, part-only mask, views
        p_clean = reject_scores(judge.judge_all(val.images))
        p = reject_scores(judge.judge_all(images)) if refocus else p_clean
        policy = parse_policy(b.meta.get("threshold_policy", "cost:20"))
        c, fa, fr = cost(val.labels, p, b.threshold, ratio)
        lowest = np.sort(p[val.labels == 1])[:3]
        result["models"][role] = {"bundle": str(b.path), "threshold": b.threshold, "policy": str(policy),
                                  "cost": c, "false_accepts": fa, "false_rejects": fr,
                                  "lowest_defect_scores": [round(float(v), 4) for v in lowest]}
        clean.append(p_clean)
        measured.append(p)
        policies.append(policy)
        outputs.append(judge.classifier.spec.output)
    result["bootstrap"] = paired_bootstrap(val.labels, (clean[0], clean[1]), (measured[0], measured[1]),
                                           (policies[0], policies[1]), ratio, resamples, seed,
                                           (outputs[0], outputs[1]))
    return result


def render(result: dict[str, Any]) -> str:
    """The comparison as a few plain lines for the terminal."""
    v, bs = result["validation"], result["bootstrap"]
    r = result["cost_ratio"]
    what = ("validation" if v.get("source", "validation") == "validation"
            else f"labelled folder {v['data']} (every image; neither bundle may have trained on it)")
    lines = [f"{what}: {v['images']} images ({v['defects']} defects), fingerprint {v['fingerprint'][:12]}"
             + (f", every image refocused: {v['refocus']}" if v["refocus"] else "")]
    for role, key in (("champion", "a"), ("challenger", "b")):
        m = result["models"][role]
        d = bs[key]
        lines.append(f"{role:10s} {m['bundle']}: threshold {m['threshold']:.8g} ({m['policy']}), cost {m['cost']:g} "
                     f"({m['false_accepts']} escapes, {m['false_rejects']} good rejected); lowest defect scores "
                     f"{m['lowest_defect_scores']}; bootstrap cost median {d['median']:g} [5-95%: {d['p5']:g}-{d['p95']:g}]")
    lines.append(f"cost = {r:g} x escapes + good rejected. Over {bs['resamples']} resamples of the validation images "
                 f"(seed {bs['seed']}), each threshold chosen again and counted on the same resample (in-sample, "
                 f"a best case), the challenger costs less in {100 * bs['b_lower']:.1f}%, "
                 f"the same in {100 * bs['tie']:.1f}%, more in {100 * bs['b_higher']:.1f}%.")
    oob = bs["out_of_bag"]
    lines.append(f"Counted on the images each resample left out (scaled to {v['images']}): champion median "
                 f"{oob['a']['median']:.3g} [5-95%: {oob['a']['p5']:.3g}-{oob['a']['p95']:.3g}], an unseen defect "
                 f"escapes in {100 * oob['a_escape_rate']:.1f}% of resamples; challenger median {oob['b']['median']:.3g} "
                 f"[{oob['b']['p5']:.3g}-{oob['b']['p95']:.3g}], escapes in {100 * oob['b_escape_rate']:.1f}%; the "
                 f"challenger costs less in {100 * oob['b_lower']:.1f}%, the same in {100 * oob['tie']:.1f}%, "
                 f"more in {100 * oob['b_higher']:.1f}%.")
    return "\n".join(lines)


def line_rule(champion: Path, challenger: Path, data: Path, ratio: float = 20.0) -> dict[str, Any]:
    """Both bundles under the line-condition rule (trainer.lineval): each judged as the edge would,
    its threshold chosen again by cost:R over the plain and line-condition validation sets, the
    summed cost compared. The rule's step 4 for replacing a shipped model."""
    from edge.offline import evaluate  # noqa: PLC0415
    from trainer.lineval import rule_threshold  # noqa: PLC0415

    bundles = [bundle_fmt.load(champion), bundle_fmt.load(challenger)]
    val = validation_of(bundles, data)
    out: dict[str, Any] = {"validation": {"images": len(val.labels), "defects": int(val.labels.sum()),
                                          "fingerprint": val.fingerprint}, "cost_ratio": ratio, "models": {}}
    changed = evaluate.condition_images(val.images)  # the same condition images for both bundles
    for role, b in zip(("champion", "challenger"), bundles):
        judge = Judge.from_bundle(b)
        sets = evaluate.judge_sets(judge, val.images, val.labels, changed)
        t, summary = rule_threshold(sets, Policy("cost", ratio), ratio, judge.classifier.spec.output)
        out["models"][role] = {"bundle": str(b.path), "threshold_by_rule": t, "bundle_threshold": b.threshold,
                               **summary}
    a, c = (out["models"][k]["summed_cost"] for k in ("champion", "challenger"))
    out["verdict"] = "challenger replaces champion" if c < a else "champion stays"
    return out


def render_line_rule(result: dict[str, Any]) -> str:
    v = result["validation"]
    lines = [f"line-condition rule on validation: {v['images']} images ({v['defects']} defects) x 15 sets "
             f"(plain + 14 conditions), cost = {result['cost_ratio']:g} x escapes + good rejected"]
    for role in ("champion", "challenger"):
        m = result["models"][role]
        worst = max(m["sets"].items(), key=lambda kv: kv[1]["cost"])
        lines.append(f"{role:10s} {m['bundle']}: threshold by rule {m['threshold_by_rule']:.8g}, summed cost "
                     f"{m['summed_cost']:g} ({m['escapes_total']} escapes); worst set {worst[0]} cost "
                     f"{worst[1]['cost']:g}")
        lines.append("           " + ", ".join(f"{k} {x['cost']:g}" for k, x in m["sets"].items()))
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)
