"""`edge-train adapt`: fine-tune a bundle on a new line's labelled images (docs/commissioning.md).

The new line's labelled folder is split, per class and seeded, into images to adapt on
(`--per-class` of each) and held-out images that nothing here looks at until the report.
The base bundle's float model is fine-tuned on the adaptation images mixed with a sample of
its own fit images (so the old line is not forgotten), with the base's augmentation and
part-only input. With a few dozen images one small validation split would set the
threshold on a handful of parts, so the threshold is chosen, by the base's policy, on
out-of-fold scores: each adaptation image scored by a model fine-tuned without it (k folds;
with `--interpolate`, each model's weights blended toward the base's, trainer.interpolate),
together with the int8 decisions on the base's own validation images. The final model
(all adaptation images) is exported to int8 as `fit` does, with the base's test-time views (the
out-of-fold scores are taken over them too), its guard recalibrated on the
images it was tuned on, and the report puts base and adapted side by side on the held-out
new-line images and on the original validation.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.guard import Guard
from edge.inference.guard import calibrate as calibrate_guard
from edge.inference.judge import Judge, reject_scores
from edge.inference.model import Classifier
from edge.inference.override import SCORES_KEY, score_record
from edge.offline.dataset import (
    CLASS_NAMES,
    DatasetError,
    file_digests,
    fingerprint,
    first_per_class,
    list_labelled,
    load_samples,
    stratified_split,
)
from edge.offline.metrics import summarize
from edge.vision.partview import (
    InputSpec,
    circles_and_backdrops,
    combine_logits,
    combine_views,
    dihedral_views,
    logits,
)
from trainer.adapt_report import defects_accepted, promotion_checks, render
from trainer.augment import AUGMENTATIONS
from trainer.compare import split_of
from trainer.data import eval_dataset, train_dataset
from trainer.distill import MARKED, soften_marked
from trainer.export import ExportError, check_int8_accuracy, to_int8_tflite
from trainer.fit import image_stats, masked_inputs, output_meta
from trainer.interpolate import blend, parse_interpolation
from trainer.loop import EpochLog, StopOnNonFinite, _compile, recalibrate_batchnorm
from trainer.models import save_float
from trainer.options import FLOAT_MODEL, REJECTED_FLOAT, REJECTED_RECORD, REJECTED_TFLITE, OutputError
from trainer.threshold import adapted_threshold, parse_policy, parse_rule

log = logging.getLogger(__name__)


@dataclass
class AdaptOptions:
    base: Path
    data: Path  # the new line's labelled folder (def_front/, ok_front/)
    out: Path
    original: Path  # the base's training data (train/ and test/)
    per_class: int = 40
    folds: int = 4
    epochs: int = 4
    steps_per_epoch: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-4
    mix: float = 3.0  # original fit images per adaptation image
    seed: int = 0
    original_limit: int | None = None  # first N per class of the original data (quick runs, tests)
    max_int8_drop: float = 0.5
    threshold_rule: str = "keep-old-line"  # trainer.threshold.THRESHOLD_RULES (margin:D with its D)
    keep_base: float = 0.0  # weight of the base's opinion in the mixed original images' targets (0 to 0.5)
    interpolate: str = "1"  # the fine-tune's share of the weights (trainer.interpolate), or "auto"
    force: bool = False
    command: str = ""


def _pick(labels: np.ndarray, per_class: int, seed: int, where: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    adapt, held = [], []
    for label, cls in enumerate(CLASS_NAMES):
        idx = np.flatnonzero(labels == label)
        if len(idx) < per_class + 1:
            raise DatasetError(f"{where / cls}: {len(idx)} images; --per-class {per_class} needs at least "
                               f"{per_class + 1} (the rest is held out for the report)")
        idx = rng.permutation(idx)
        adapt.append(idx[:per_class])
        held.append(idx[per_class:])
    return np.sort(np.concatenate(adapt)), np.sort(np.concatenate(held))


def _folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k stratified folds of positions 0..len(labels)-1."""
    rng = np.random.default_rng(seed + 1)
    out: list[list[int]] = [[] for _ in range(k)]
    for label in (0, 1):
        for n, i in enumerate(rng.permutation(np.flatnonzero(labels == label))):
            out[n % k].append(int(i))
    return [np.sort(np.array(f, dtype=int)) for f in out]


def run(opts: AdaptOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    base = bundle_fmt.load(opts.base)
    if not (Path(opts.base) / FLOAT_MODEL).is_file():
        raise OutputError(f"--base {opts.base}: no {FLOAT_MODEL} there (a bundle made by edge-train fit)")
    if opts.out.exists() and any(opts.out.iterdir()) and not opts.force:
        raise OutputError(f"{opts.out}: not empty; choose another --out or pass --force")
    if opts.folds < 2:
        raise OutputError(f"--folds {opts.folds}: at least 2 (out-of-fold scores set the threshold)")
    try:
        spec = InputSpec.from_meta(base.meta)  # the base's views too: chosen for it by the line rule
    except ValueError as exc:
        raise bundle_fmt.BundleError(f"{Path(opts.base) / bundle_fmt.SIDECAR_FILE}: {exc}") from None
    policy = parse_policy(base.meta.get("threshold_policy", "cost:20"))
    rule_name, _ = parse_rule(opts.threshold_rule)  # a bad rule is told before minutes of fine-tuning
    alphas = parse_interpolation(opts.interpolate)
    if len(alphas) > 1 and rule_name == "union":
        raise OutputError(f"--interpolate {opts.interpolate} picks the share that keeps the old line's bar; "
                          "--threshold-rule union does not look for one (use keep-old-line or margin:D)")
    if not 0.0 <= opts.keep_base <= 0.5:
        raise OutputError(f"--keep-base {opts.keep_base}: the base's share of a target is 0 to 0.5 (at most half, "
                          "so a labelled defect's target never falls below one half)")
    aug_name = base.meta.get("training", {}).get("augmentation", {}).get("name", "line-part")
    aug = AUGMENTATIONS[aug_name]
    arch = base.meta.get("architecture", "edge")

    new_samples = list_labelled(opts.data)
    new = load_samples(new_samples)
    adapt_idx, held_idx = _pick(new.labels, opts.per_class, opts.seed, opts.data)
    split_seed, fraction, limit = split_of(base.meta)
    orig_limit = opts.original_limit if opts.original_limit is not None else limit
    orig_samples = first_per_class(list_labelled(opts.original / "train"), orig_limit)
    orig = load_samples(orig_samples)
    fit_idx, val_idx = stratified_split(orig.labels, fraction, split_seed)
    val_digests = file_digests([s for s in orig_samples if s.path in {orig.paths[i] for i in val_idx}])
    new_digests = file_digests(new_samples)
    if set(val_digests.values()) & {new_digests[new.paths[i]] for i in range(len(new.paths))}:
        raise DatasetError(f"{opts.data}: holds images of the base's validation split; a new line's folder "
                           "must be new images")
    rng = np.random.default_rng(opts.seed)
    mix_idx = np.sort(rng.choice(fit_idx, size=min(len(fit_idx), round(opts.mix * len(adapt_idx))), replace=False))
    log.info("adapt split", extra={"adapt": len(adapt_idx), "held_out": len(held_idx), "original_mix": len(mix_idx),
                                   "original_validation": len(val_idx), "base": base.short_id})

    new_rims, new_table = circles_and_backdrops(new.images, spec.finder)
    used = np.union1d(mix_idx, val_idx)  # the only original images looked at: their rims, not all ~6600
    used_rims, used_table = circles_and_backdrops(orig.images[used], spec.finder)
    orig_rims: list[Any] = [None] * len(orig.images)
    orig_table = np.zeros((len(orig.images), 4), np.float32)
    for k, i in enumerate(used):
        orig_rims[i] = used_rims[k]
    orig_table[used] = used_table

    def masked(images: np.ndarray, rims: list[Any]) -> np.ndarray:
        return masked_inputs(images, rims, spec)

    teacher = keras.models.load_model(Path(opts.base) / FLOAT_MODEL, compile=False) if opts.keep_base else None

    def tuned_on(sel: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """The images a fine-tune on `sel` sees: those new-line images and the original mix."""
        return (np.concatenate([new.images[sel], orig.images[mix_idx]]),
                [new_rims[i] for i in sel] + [orig_rims[i] for i in mix_idx])

    def tune(sel: np.ndarray, seed: int, label: str) -> keras.Model:
        x, rims = tuned_on(sel)
        y = np.concatenate([new.labels[sel], orig.labels[mix_idx] + (MARKED if teacher is not None else 0)])
        table = np.concatenate([new_table[sel], orig_table[mix_idx]])
        keras.utils.set_random_seed(seed)
        model = keras.models.load_model(Path(opts.base) / FLOAT_MODEL, compile=False)
        _compile(model, opts.learning_rate)
        data = train_dataset(x, y, opts.batch_size, aug, seed, circles=table, margin=spec.margin,
                             fill=float(spec.fill), tone=spec.tone)
        if teacher is not None:  # the old line's images also learn the base's opinion (--keep-base)
            data = soften_marked(data, teacher, opts.keep_base)
        model.fit(data, steps_per_epoch=opts.steps_per_epoch, epochs=opts.epochs, verbose=0,
                  callbacks=[StopOnNonFinite(label, "--learning-rate", opts.learning_rate),
                             EpochLog(opts.epochs, label)])
        # Exact batch-norm statistics of the un-augmented images it was tuned on, as fit does
        # (moving averages over augmented batches belong to neither; int8 lost 0.6 points without).
        recalibrate_batchnorm(model, masked(x, rims), opts.batch_size)
        return model

    def toward_base(tuned: keras.Model, sel: np.ndarray, alpha: float) -> keras.Model:
        """`alpha` of the fine-tune and the rest of the base (--interpolate), its batch-norm statistics
        recalibrated on the images the fine-tune saw, as the fine-tune's own were."""
        if alpha == 1.0:
            return tuned
        model = blend(base_float, tuned, alpha)
        recalibrate_batchnorm(model, masked(*tuned_on(sel)), opts.batch_size)
        return model

    def float_scores(model: keras.Model, idx: np.ndarray) -> np.ndarray:
        """Out-of-fold scores as the bundle will decide: over the base's views, combined as it combines them."""
        inputs = masked(new.images[idx], [new_rims[i] for i in idx])
        views = np.stack([v for x in inputs for v in dihedral_views(x, spec.views)])
        p = model.predict(eval_dataset(views, None, opts.batch_size), verbose=0).reshape(len(inputs), spec.views)
        if spec.views == 1:
            return p[:, 0]
        if spec.output == "logit":  # as the edge combines a logit output's views: no floor at p 1/512
            return np.array([combine_logits(row, spec.aggregate) for row in logits(p, 1e-12)])  # float32 saturates
        return np.array([combine_views(row, spec.aggregate) for row in p])

    folds = _folds(new.labels[adapt_idx], min(opts.folds, opts.per_class), opts.seed)
    fold_models = []
    for f, fold in enumerate(folds):
        sel = adapt_idx[np.setdiff1d(np.arange(len(adapt_idx)), fold)]
        fold_models.append((tune(sel, opts.seed + 1 + f, f"fold {f + 1}/{len(folds)} epoch"), sel, fold))
    final_tuned = tune(adapt_idx, opts.seed, "final epoch")
    base_float = keras.models.load_model(Path(opts.base) / FLOAT_MODEL, compile=False) if alphas != (1.0,) else None

    tuned_x, tuned_rims = tuned_on(adapt_idx)
    cal = masked(tuned_x, tuned_rims)[rng.permutation(len(tuned_x))[:300]]
    guard_limits = None
    try:
        guard_limits = calibrate_guard(tuned_x, tuned_rims)[0]
    except ValueError as exc:
        log.warning(f"no guard in the adapted bundle: {exc}")
    guard = Guard(guard_limits) if guard_limits is not None else None
    val_images, val_labels = orig.images[val_idx], orig.labels[val_idx]
    val_rims = [orig_rims[i] for i in val_idx]
    base_judge = Judge.from_bundle(base)
    base_val_scores = reject_scores(base_judge.judge_all(val_images, val_rims))
    base_val = summarize(val_labels, base_val_scores, base.threshold)
    bar = (base_val["false_accepts"], base_val["false_accepts"] + base_val["false_rejects"])

    val_inputs = masked(val_images, val_rims)  # the float model's inputs for the int8 gate, one per share

    def candidate(alpha: float) -> dict[str, Any]:
        """The bundle at fine-tune share `alpha`: out-of-fold scores, int8 model and threshold."""
        oof = np.zeros(len(adapt_idx))
        for model, sel, fold in fold_models:
            oof[fold] = float_scores(toward_base(model, sel, alpha), adapt_idx[fold])
        final = toward_base(final_tuned, adapt_idx, alpha)
        tflite = to_int8_tflite(final, cal, spec.output)  # the base's kind of output, as its views
        clf = Classifier(tflite, num_threads=1, spec=spec)
        int8_val = reject_scores(Judge(clf, 1.0, guard).judge_all(val_images, val_rims))
        chosen = adapted_threshold(opts.threshold_rule, new.labels[adapt_idx], oof, val_labels, int8_val, bar,
                                   policy, spec.output)
        at = summarize(val_labels, int8_val, chosen.threshold)
        # quantisation alone, as fit checks it: the float and int8 models on the same single view
        float_val = final.predict(eval_dataset(val_inputs, None, opts.batch_size), verbose=0).ravel()
        model_only_val = Classifier(tflite, num_threads=1, spec=replace(spec, views=1)).predict(val_images, val_rims)
        try:
            check_int8_accuracy(summarize(val_labels, float_val, chosen.threshold)["accuracy"],
                                summarize(val_labels, model_only_val, chosen.threshold)["accuracy"],
                                opts.max_int8_drop)
            gate = None
        except ExportError as exc:
            gate = f"{exc} (on the original validation images)"
        log.info("adapt candidate", extra={"alpha": alpha, "threshold": chosen.threshold, "kept": chosen.kept,
                                           "val_escapes": at["false_accepts"], "val_rejected": at["false_rejects"],
                                           "int8_gate": gate or "passed"})
        return {"alpha": alpha, "oof": oof, "final": final, "tflite": tflite, "clf": clf, "int8_val": int8_val,
                "chosen": chosen, "gate": gate,
                "tried": {"alpha": alpha, "threshold": chosen.threshold, "kept": chosen.kept,
                          "int8_gate": gate or "passed",
                          "original_validation": {"false_accepts": at["false_accepts"],
                                                  "false_rejects": at["false_rejects"]}}}

    # `auto`: the most adaptation whose bundle keeps the old line's bar and passes the int8 gate;
    # where none does, the fine-tune alone under the rule's fallback, as without interpolation.
    def eligible(c: dict[str, Any]) -> bool:
        return c["chosen"].kept is not False and c["gate"] is None

    candidates: list[dict[str, Any]] = []
    for alpha in alphas:
        candidates.append(candidate(alpha))
        if eligible(candidates[-1]):
            break
    pick = candidates[-1] if eligible(candidates[-1]) else candidates[0]
    if pick["gate"] is not None:
        # Minutes of fine-tuning are kept for a look, as fit keeps its refused model; the held-out
        # images were not judged, and no bundle (model.json) is written.
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / REJECTED_TFLITE).write_bytes(pick["tflite"])
        save_float(pick["final"], arch, opts.out / REJECTED_FLOAT)
        (opts.out / REJECTED_RECORD).write_text(json.dumps(
            {"base": {"bundle": str(opts.base), "id": base.short_id}, "gate": pick["gate"],
             "tried": [c["tried"] for c in candidates]}, indent=2, default=str) + "\n")
        raise ExportError(f"{pick['gate']}: no bundle written; the refused model is {opts.out / REJECTED_TFLITE} "
                          f"(float weights {REJECTED_FLOAT}, what was tried {REJECTED_RECORD})")
    oof, final, tflite, clf, int8_val = pick["oof"], pick["final"], pick["tflite"], pick["clf"], pick["int8_val"]
    chosen = pick["chosen"]
    choose_labels = np.concatenate([new.labels[adapt_idx], val_labels])
    choose_scores = np.concatenate([oof, int8_val])
    val_scores = {"base": base_val_scores, "adapted": int8_val}
    threshold, kept = chosen.threshold, chosen.kept
    if kept is False:
        log.warning("no threshold keeps the base's bar on the original validation; the policy on both sets "
                    "decides", extra={"bar_escapes": bar[0], "bar_errors": bar[1]})

    adapted = Judge(clf, threshold, guard)
    held_images, held_labels = new.images[held_idx], new.labels[held_idx]
    held_rims = [new_rims[i] for i in held_idx]
    figures: dict[str, Any] = {}
    held_scores: dict[str, np.ndarray] = {}
    for name, judge, t in (("base", base_judge, base.threshold), ("adapted", adapted, threshold)):
        held_scores[name] = reject_scores(judge.judge_all(held_images, held_rims))
        figures[name] = {
            "held_out": summarize(held_labels, held_scores[name], t),
            "original_validation": summarize(val_labels, val_scores[name], t),  # scores do not depend on t
        }

    held_names = [str(new.paths[i].relative_to(opts.data)) for i in held_idx]
    figures["checks"] = promotion_checks(figures)
    figures["held_out_defects_accepted"] = defects_accepted(held_names, held_labels, held_scores["base"],
                                                            base.threshold, held_scores["adapted"], threshold)
    record = {
        "base": {"bundle": str(opts.base), "id": base.short_id, "threshold": base.threshold},
        "new_line": {"root": str(opts.data), "fingerprint": fingerprint(new_samples, opts.data, new_digests),
                     "adapt_per_class": opts.per_class, "adapt": [str(new.paths[i].relative_to(opts.data))
                                                                 for i in adapt_idx],
                     "held_out": held_names},
        "original": {"root": str(opts.original), "mix_images": len(mix_idx), "validation_images": len(val_idx),
                     "limit_per_class": orig_limit},
        "interpolation": {"rule": str(opts.interpolate), "alpha": pick["alpha"],
                          "tried": [c["tried"] for c in candidates]},
        "threshold_from": {"policy": str(policy), "rule": opts.threshold_rule, "before_margin": chosen.before_margin,
                           "old_line_bar": {"escapes": bar[0], "errors": bar[1], "kept": kept},
                           "scores": {"out_of_fold_new_line": score_record(new.labels[adapt_idx], oof),
                                      "original_validation_int8": score_record(val_labels, int8_val)},
                           "out_of_fold_new_line": len(oof), "folds": len(folds),
                           "original_validation_int8": len(int8_val)},
        "options": json.loads(json.dumps(asdict(opts), default=str)),
    }
    meta = copy.deepcopy(base.meta)
    meta.pop("sha256", None)
    meta.update({
        "threshold": threshold,
        "views": spec.views,
        "input": {**meta["input"], "dtype": str(clf.input_dtype), "scale": clf.input_scale,
                  "zero_point": clf.input_zero},
        "output": output_meta(clf),
        "architecture": arch,
        "float_model": FLOAT_MODEL,
        SCORES_KEY: score_record(choose_labels, choose_scores),
    })
    meta["training"] = {**meta.get("training", {}), "command": opts.command, "adapted": record}
    meta["metrics"] = {"adapt": figures}
    meta["image_stats"] = image_stats(tuned_x)  # the drift baseline: the images it was tuned on
    meta.pop("guard", None)  # the base's limits describe the old line's parts, not these
    if guard_limits is not None:
        meta["guard"] = guard_limits.to_meta()
    meta.pop("line_rule", None)  # chosen for the base on the old line's conditions; not this model's
    opts.out.mkdir(parents=True, exist_ok=True)
    for stale in (REJECTED_TFLITE, REJECTED_FLOAT, REJECTED_RECORD):  # an earlier refused run's, with --force
        (opts.out / stale).unlink(missing_ok=True)
    written = bundle_fmt.write(opts.out, tflite, meta)
    save_float(final, arch, opts.out / FLOAT_MODEL)
    result = {"threshold": threshold, "figures": figures, "adapt": record,
              "seconds": round(time.perf_counter() - t0, 1), "bundle": str(opts.out), "id": written.short_id}
    (opts.out / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (opts.out / "report.md").write_text(render(result))
    log.info("adapted bundle written", extra={"out": str(opts.out), "threshold": threshold,
                                              "held_out_escapes": figures["adapted"]["held_out"]["false_accepts"]})
    return result
