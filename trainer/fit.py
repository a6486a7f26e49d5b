"""`edge-train fit`: data -> trained Keras model -> verified int8 bundle + report."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edge.inference import bundle as bundle_fmt
from edge.inference.guard import Guard
from edge.inference.guard import calibrate as calibrate_guard
from edge.inference.judge import Judge, reject_scores
from edge.inference.model import Classifier
from edge.inference.override import SCORES_KEY, score_record
from edge.offline.dataset import (
    CLASS_NAMES,
    POSITIVE_CLASS,
    DatasetError,
    LoadedImages,
    Sample,
    file_digests,
    fingerprint,
    first_per_class,
    list_labelled,
    load_samples,
    stratified_split,
)
from edge.offline.metrics import summarize
from edge.offline.perturb import FOCUS_CHANGES, PerturbConfig, perturb_all, refocus_all
from edge.ops.drift import crop_stats
from edge.vision.partview import InputSpec, circles_and_backdrops, part_only_input, part_tone
from edge.vision.preprocess import IMAGE_SIZE
from edge.vision.tone import TONES
from trainer import distill, hard, lineval, report, resume, synth
from trainer.augment import AugmentConfig
from trainer.data import eval_dataset
from trainer.export import ExportError, check_int8_accuracy, to_int8_tflite
from trainer.loop import TrainingError, train
from trainer.models import ARCHITECTURES, save_float
from trainer.options import (
    FLOAT_MODEL,
    PRODUCTS,
    REJECTED_TFLITE,
    FitOptions,
    OutputError,
    check_output,
    prepare_output,
    remove,
)
from trainer.threshold import evidence, parse_policy

__all__ = ["FitOptions", "OutputError", "TrainingError", "run"]  # what trainer.cli imports from here

log = logging.getLogger(__name__)


def _json_text(value: Any, name: str) -> str:
    """JSON without NaN/Infinity tokens, which strict readers reject and no model should produce."""
    try:
        return json.dumps(value, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise TrainingError(f"{name} would hold a non-finite number: the trained model is unusable; "
                            "no bundle written") from None


def _load_split(root: Path, name: str, samples: list[Sample]) -> LoadedImages:
    t = time.perf_counter()
    loaded = load_samples(samples)
    for label, cls in enumerate(CLASS_NAMES):
        if not (loaded.labels == label).any():
            raise DatasetError(f"{root / name / cls}: no readable images left after skipping bad files")
    log.info("decoded split", extra={"split": name, "images": len(loaded.paths),
                                     "skipped": len(loaded.skipped), "s": round(time.perf_counter() - t, 1)})
    return loaded


def image_stats(images: np.ndarray) -> dict[str, Any]:
    """Per-image brightness, contrast and sharpness of the training crops: the edge's drift baseline."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    per_image = [crop_stats(img) for img in images]
    out: dict[str, Any] = {"fit_mean": round(float(flat.mean()), 2), "fit_std": round(float(flat.std()), 2)}
    for name in ("brightness", "contrast", "sharpness"):
        v = np.array([s[name] for s in per_image])
        out[name] = {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2)}
    return out


def _int8_latency_ms(tflite: bytes, image: np.ndarray) -> float:
    clf = Classifier(tflite, num_threads=1)
    for _ in range(10):
        clf.p_defect(image)
    times = []
    for _ in range(100):
        t = time.perf_counter()
        clf.p_defect(image)
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1000, 3)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("n", "accuracy", "false_accepts", "false_rejects", "confusion")}


def _init_identity(opts: FitOptions) -> dict[str, str] | None:
    """The --init bundle's float model (path, sha256), checked before anything is written."""
    if opts.init is None:
        return None
    path = Path(opts.init) / FLOAT_MODEL
    if not path.is_file():
        raise OutputError(f"--init {opts.init}: no {FLOAT_MODEL} there (a bundle made by edge-train fit)")
    return {"path": str(opts.init), "float_model_sha256": bundle_fmt.sha256_file(path)}


def _rims(train_images: np.ndarray, test_images: np.ndarray, aug: AugmentConfig, finder: str) -> dict[str, Any]:
    """Each image's rim circle (edge.vision.partview, as the edge finds it) where the recipe needs it."""
    if not (aug.part_only or aug.backdrop > 0):
        return {}
    t = time.perf_counter()
    train_rims, train_table = circles_and_backdrops(train_images, finder)
    test_rims, _ = circles_and_backdrops(test_images, finder)
    missed = sum(not c.found for c in train_rims) + sum(not c.found for c in test_rims)
    log.info("rims located", extra={"finder": finder, "images": len(train_rims) + len(test_rims), "fallback_to_framing": missed,
                                    "s": round(time.perf_counter() - t, 1)})
    return {"train": train_rims, "train_table": train_table, "test": test_rims, "fallbacks": missed}


def output_meta(clf: Classifier) -> dict[str, Any]:
    """model.json's `output`: the int8 output's quantization and what it represents (an older
    bundle's lacks `represents`: p_defect, which a new one also writes as before)."""
    out = {"dtype": str(clf.output_dtype), "scale": clf.output_scale, "zero_point": clf.output_zero}
    if clf.spec.output == "logit":
        return {**out, "represents": "logit", "meaning": "p_defect = sigmoid(scale * (q - zero_point))"}
    return {**out, "meaning": "p_defect = scale * (q - zero_point)"}


def masked_inputs(images: np.ndarray, rims: list[Any], spec: InputSpec) -> np.ndarray:
    """The images as a part-only model sees them (tones matched, masked beyond each rim: the edge's
    own function); unchanged otherwise."""
    if not spec.part_only:
        return images
    return np.stack([part_only_input(img, spec, c) for img, c in zip(images, rims, strict=True)])


def run(opts: FitOptions) -> dict[str, Any]:
    """The whole fit; returns the metrics dict. Raises DatasetError/OutputError/PolicyError/ResumeMismatch
    (before --out is touched), TrainingError (training diverged) or ExportError (int8 gate failed)."""
    if opts.arch not in ARCHITECTURES:
        raise OutputError(f"--arch {opts.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    policy = parse_policy(opts.threshold_policy)
    aug_name, aug = opts.augment_config()
    if opts.tone not in TONES:
        raise OutputError(f"--tone {opts.tone!r}: choose one of {', '.join(TONES)}")
    if opts.tone != "none" and not aug.part_only:
        raise OutputError(f"--tone {opts.tone}: tones are matched inside the part's rim, so it needs a part-only "
                          f"--augment (line-part, line-pinhole); --augment {aug_name} is not")
    for split in ("train", "test"):
        if not (opts.data / split).is_dir():
            raise DatasetError(f"{opts.data / split}: missing (expected {opts.data}/train and {opts.data}/test)")
    teacher_ids = distill.identities(opts.teachers, opts.out)  # before the output folder is touched
    init_id = _init_identity(opts)
    if opts.hard_examples and opts.init is None:
        raise OutputError(f"--hard-examples {opts.hard_examples} needs --init BUNDLE: the hard examples are the "
                          "fit images that bundle judges worst")
    miner = hard.init_bundle(opts.init) if opts.hard_examples and opts.init is not None else None
    check_output(opts)
    ckpt = opts.out / "checkpoints"
    # what the checkpoints are trained with
    as_run = _jsonable({**asdict(opts), "augment": aug_name, "teachers": teacher_ids, "init": init_id})
    if opts.resume:
        resume.check_options(ckpt, as_run)
        done = resume.completed_epochs(ckpt)
        if opts.epochs < done:
            raise resume.ResumeMismatch(
                f"{opts.out}: --epochs {opts.epochs} is fewer than the {done} epochs the checkpoints already "
                f"hold; resume with --epochs {done} or more, or start afresh with --force")
    t_start = time.perf_counter()

    # Every check on the data comes before --out is touched (see prepare_output).
    train_samples, test_samples = (first_per_class(list_labelled(opts.data / split), opts.limit)
                                   for split in ("train", "test"))
    train_set = _load_split(opts.data, "train", train_samples)
    test_set = _load_split(opts.data, "test", test_samples)
    skipped = train_set.skipped + test_set.skipped
    digests = file_digests(train_samples + test_samples)
    train_digests = {digests[p] for p in train_set.paths}
    unique = np.array([digests[p] not in train_digests for p in test_set.paths])
    train_fingerprint = fingerprint(train_samples, opts.data, digests)
    if opts.resume:
        resume.check_data(ckpt, train_fingerprint)

    fit_idx, val_idx = stratified_split(train_set.labels, opts.val_fraction, opts.split_seed)
    for label, cls in enumerate(CLASS_NAMES):
        n_fit, n_val = (int((train_set.labels[idx] == label).sum()) for idx in (fit_idx, val_idx))
        if not n_fit or not n_val:
            raise DatasetError(
                f"{opts.data / 'train' / cls}: {n_fit + n_val} readable images split into {n_fit} to fit and "
                f"{n_val} to validate (--val-fraction {opts.val_fraction}); both need at least one: use more "
                "images (a larger --limit) or another --val-fraction")
    fit_x, fit_y = train_set.images[fit_idx], train_set.labels[fit_idx]
    val_x, val_y = train_set.images[val_idx], train_set.labels[val_idx]
    spec = InputSpec(part_only=aug.part_only, views=opts.views, finder=opts.rim_finder, output=opts.output)
    rims = _rims(train_set.images, test_set.images, aug, opts.rim_finder)
    if opts.tone == "match":  # the fit images' own tones, so a resumed run recomputes the same ones
        spec = replace(spec, tone=part_tone(fit_x, [rims["train"][i] for i in fit_idx]))
    fit_inputs, val_inputs, test_inputs = fit_x, val_x, test_set.images
    if spec.part_only:
        fit_inputs = masked_inputs(fit_x, [rims["train"][i] for i in fit_idx], spec)
        val_inputs = masked_inputs(val_x, [rims["train"][i] for i in val_idx], spec)
        test_inputs = masked_inputs(test_set.images, rims["test"], spec)
    val_paths = {train_set.paths[i] for i in val_idx}
    val_fingerprint = fingerprint([s for s in train_samples if s.path in val_paths], opts.data, digests)
    teachers = distill.load(opts.teachers, IMAGE_SIZE, train_fingerprint, val_fingerprint,
                            (opts.split_seed, opts.val_fraction, opts.limit))
    log.info("split", extra={"fit": len(fit_idx), "validation": len(val_idx), "test": len(test_set.paths),
                             "test_unique": int(unique.sum())})

    prepare_output(opts)
    resume.record(ckpt, as_run, train_fingerprint)
    (opts.out / "skipped.txt").write_text("".join(f"{p}\t{why}\n" for p, why in skipped))
    fit_names = [f"{train_set.paths[i].parent.name}/{train_set.paths[i].name}" for i in fit_idx]
    mined = hard.mined_for_run(ckpt, miner, fit_x, fit_y, fit_names) if miner is not None else None

    model, history = train(opts, fit_x, fit_y, val_inputs, val_y, aug, teachers, fit_inputs,
                           rims["train_table"][fit_idx] if rims else None, spec,
                           pool=mined.pool(len(fit_x), opts.hard_examples) if mined else None,
                           gentle=mined.gentle(len(fit_x)) if mined else None)
    # From here on this run's model replaces whatever a resumed run had produced before: a
    # bundle left beside this run's metrics, or a failed gate's, would describe another model.
    removed = remove(opts.out, PRODUCTS)
    if removed:
        log.info("replacing the previous outputs of this run folder", extra={"removed": removed})
    # The float model without optimizer state, for audits and float-vs-int8 comparisons.
    save_float(model, opts.arch, opts.out / FLOAT_MODEL)
    float_val = model.predict(eval_dataset(val_inputs, None, opts.batch_size), verbose=0).ravel()
    float_test = model.predict(eval_dataset(test_inputs, None, opts.batch_size), verbose=0).ravel()
    if not (np.isfinite(float_val).all() and np.isfinite(float_test).all()):
        raise TrainingError("the trained model outputs non-finite probabilities (training diverged); "
                            f"try a lower --learning-rate (now {opts.learning_rate:g}). No bundle written")

    rng = np.random.default_rng(opts.seed)
    cal = fit_inputs[rng.choice(len(fit_x), size=min(opts.calibration_images, len(fit_x)), replace=False)]
    tflite = to_int8_tflite(model, cal, spec.output)
    val_rims = [rims["train"][i] for i in val_idx] if rims else None
    test_rims = rims["test"] if rims else None
    # The guard's limits come from the clean fit images, as the edge will see them (rims found there).
    guard_limits = None
    if rims:
        try:
            guard_limits = calibrate_guard(fit_x, [rims["train"][i] for i in fit_idx])[0]
        except ValueError as exc:  # e.g. images with no rim the locator finds: no guard, said loudly
            log.warning(f"no guard in this bundle: {exc}")
    guard = Guard(guard_limits) if guard_limits is not None else None
    rule = lineval.choose_views_and_threshold(tflite, spec, guard, val_x, val_y, val_rims, policy,
                                              opts.views or None)
    spec = replace(spec, views=rule["views"], aggregate=rule["aggregate"])
    chosen = rule["candidates"][rule["key"]]
    threshold = rule["threshold"]
    clf = Classifier(tflite, num_threads=os.cpu_count() or 1, spec=spec)
    judge = Judge(clf, threshold, guard)
    int8_val = reject_scores(judge.judge_all(val_x, val_rims))  # what is decided: a guard fault scores 1
    int8_test = reject_scores(judge.judge_all(test_set.images, test_rims))
    int8_model_test = Classifier(tflite, num_threads=os.cpu_count() or 1,
                                 spec=replace(spec, views=1)).predict(test_set.images, test_rims)
    val_names = [f"{train_set.paths[i].parent.name}/{train_set.paths[i].name}" for i in val_idx]
    threshold_evidence = evidence(val_y, int8_val, val_names, threshold)
    log.info("operating threshold and views chosen on line-condition validation", extra={
        "policy": str(policy), "threshold": threshold, "views": spec.views, "view_aggregate": spec.aggregate,
        "summed_validation_cost": chosen["summed_cost"],
        "lowest_validation_defect": (threshold_evidence["lowest_defects"] or [None])[0]})
    line_test = lineval.test_figures(Judge(Classifier(tflite, num_threads=1, spec=spec), threshold, guard),
                                     test_set.images, test_set.labels, test_rims,
                                     policy.value if policy.kind == "cost" else 20.0, opts.second_camera)

    pits = None
    if val_rims is not None:  # pits go on the flange: only where rims were found (part-only recipes)
        good_val = np.flatnonzero(val_y == 0)
        pits = synth.detection(judge, val_x[good_val], [val_rims[i] for i in good_val])
        log.info("lone pinholes on good validation parts", extra={"clean_rejected": pits["clean_rejected"],
                                                                  "rejected": pits["rejected"]})

    perturb_cfg = PerturbConfig()
    perturbed = perturb_all(test_set.images, opts.robustness_seed, perturb_cfg)
    int8_perturbed = clf.predict(perturbed)

    y = test_set.labels
    focus = {change: {"validation": _brief(summarize(val_y, clf.predict(refocus_all(val_x, change)), threshold)),
                      "test": _brief(summarize(y, clf.predict(refocus_all(test_set.images, change)), threshold))}
             for change in FOCUS_CHANGES}
    metrics: dict[str, Any] = {
        "threshold": threshold,
        "threshold_policy": str(policy),
        "threshold_evidence": threshold_evidence,
        "validation": {"float": summarize(val_y, float_val, threshold),
                       "int8": summarize(val_y, int8_val, threshold)},
        "test_all": {"float": summarize(y, float_test, threshold),
                     "int8": summarize(y, int8_test, threshold),
                     "int8_model_only": summarize(y, int8_model_test, threshold),
                     "float_at_0.5": summarize(y, float_test, 0.5)},
        "test_unique": {"float": summarize(y[unique], float_test[unique], threshold),
                        "int8": summarize(y[unique], int8_test[unique], threshold)},
        "int8_vs_float": {
            "decision_agreement": round(float(np.mean((float_test >= threshold) == (int8_test >= threshold))), 4),
            "max_abs_diff": round(float(np.max(np.abs(float_test - int8_test))), 4),
            "mean_abs_diff": round(float(np.mean(np.abs(float_test - int8_test))), 5),
        },
        "batchnorm_recalibration": opts.extra.get("batchnorm_recalibration"),
        "weight_average": opts.extra.get("weight_average"),
        "robustness": {"perturbation": perturb_cfg.to_dict(), "seed": opts.robustness_seed,
                       "int8": summarize(y, int8_perturbed, threshold)},
        "focus": focus,
        "int8_latency_ms_1_thread": _int8_latency_ms(tflite, test_set.images[0]),
        "judge_latency_ms_1_thread": chosen["latency_ms_1_thread"],
        "line_rule": rule,
        "line_test": line_test,
        "pit_detection": pits,
        "hard_examples": mined.to_record(fit_names) if mined else None,
        "rim_fallbacks": rims.get("fallbacks") if rims else None,
        "params": model.count_params(),
        "skipped_files": [[str(p), why] for p, why in skipped],
        "train_seconds": round(time.perf_counter() - t_start, 1),
    }
    (opts.out / "metrics.json").write_text(_json_text(metrics, "metrics.json"))

    try:
        # quantisation alone: the float model against the int8 one on the same single view, no guard
        check_int8_accuracy(metrics["test_all"]["float"]["accuracy"],
                            metrics["test_all"]["int8_model_only"]["accuracy"],
                            opts.max_int8_drop)
    except ExportError as exc:
        (opts.out / REJECTED_TFLITE).write_bytes(tflite)
        raise ExportError(f"{exc}: no bundle written; the rejected model is {opts.out / REJECTED_TFLITE}") from None

    meta = {
        "image_size": list(IMAGE_SIZE),
        "color": "grayscale",
        "class_names": list(CLASS_NAMES),
        "positive_class": POSITIVE_CLASS,
        "threshold": threshold,
        "threshold_policy": str(policy),
        "decision_rule": "reject when p_defect >= threshold",
        "input": {"dtype": str(clf.input_dtype), "scale": clf.input_scale, "zero_point": clf.input_zero,
                  "meaning": "raw grayscale pixels 0..255",
                  **({"part_only": spec.to_meta()} if spec.part_only else {})},
        "views": spec.views,
        **({"view_aggregate": spec.aggregate} if spec.aggregate != "mean" else {}),
        "line_rule": {"views": rule["views"], "aggregate": rule["aggregate"], "threshold": threshold,
                      "rule": rule["rule"], "summed_validation_cost": chosen["summed_cost"]},
        "output": output_meta(clf),
        "architecture": opts.arch,
        "params": model.count_params(),
        "float_model": FLOAT_MODEL,
        "training": {
            "command": opts.command,
            "data": {"root": str(opts.data), "train_fingerprint": train_fingerprint,
                     "test_fingerprint": fingerprint(test_samples, opts.data, digests),
                     "validation_fingerprint": val_fingerprint,
                     "train_images": len(train_set.paths), "test_images": len(test_set.paths),
                     "skipped": len(skipped), "limit_per_class": opts.limit},
            "augmentation": {"name": aug_name, **aug.to_dict()},
            "distillation": {"weight": opts.distill_weight, "teachers": [t.record for t in teachers]}
            if teachers else None,
            "hard_examples": {"repeats": opts.hard_examples, "defects": len(mined.defects), "goods": len(mined.goods),
                              "list": "metrics.json hard_examples"} if mined else None,
            "options": _jsonable({k: v for k, v in asdict(opts).items() if k not in ("command", "extra")}),
            "init": init_id,  # the starting weights by digest: --init's path may hold another bundle later
            "epochs_run": len(history),
            "best_epoch": int(np.argmin([h["val_loss"] for h in history])) + 1 if history else None,
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
        },
        "image_stats": image_stats(fit_x),
        "metrics": {k: metrics[k] for k in ("test_all", "test_unique", "validation", "int8_vs_float",
                                            "robustness", "focus", "int8_latency_ms_1_thread",
                                            "judge_latency_ms_1_thread")},
        **({"guard": guard_limits.to_meta()} if guard_limits is not None else {}),
        SCORES_KEY: score_record(val_y, int8_val),  # what a threshold override is judged on (edge.inference.override)
    }
    _json_text(meta, "model.json")  # a non-finite number here means a diverged model: TrainingError, exit 1
    written = bundle_fmt.write(opts.out, tflite, meta)
    report.write(opts.out, written.meta, metrics, history, train_set, test_set, unique,
                 float_test, int8_test, fit_x, fit_y, val_y, aug, opts, val_images=dict(zip(val_names, val_x)))
    # Validation figures only: a replacement is judged on them before anyone reads test (report.md).
    val_int8 = metrics["validation"]["int8"]
    log.info("bundle written", extra={"out": str(opts.out), "threshold": threshold,
                                      "validation_int8_escapes": val_int8["false_accepts"],
                                      "validation_int8_good_rejected": val_int8["false_rejects"],
                                      "test_figures": str(opts.out / "report.md")})
    return metrics
