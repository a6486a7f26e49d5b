"""`edge-train scores`: record a bundle's validation scores in its model.json.

The daemon judges a threshold override against them (edge.inference.override). `edge-train fit`
records them as it exports; this adds them to a bundle made before that, from the same
validation images: the split is rebuilt from the options the bundle records and must
reproduce the bundle's own validation confusion at its threshold, or nothing is written.
No TensorFlow: the int8 model and guard run as on the edge.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge, reject_scores
from edge.inference.override import SCORES_KEY, score_record
from edge.offline.dataset import (
    DatasetError,
    file_digests,
    fingerprint,
    first_per_class,
    list_labelled,
    load_samples,
    stratified_split,
)

log = logging.getLogger(__name__)


class ScoresError(ValueError):
    pass


def _confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> list[list[int]]:
    y = labels.astype(bool)
    r = scores >= threshold
    return [[int((~y & ~r).sum()), int((~y & r).sum())], [int((y & ~r).sum()), int((y & r).sum())]]


def validation_scores(bundle: bundle_fmt.Bundle, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, decision scores) of the bundle's validation images, rebuilt from its recorded split."""
    training = bundle.meta.get("training") or {}
    opts = training.get("options") or {}
    recorded = training.get("data") or {}
    seed = opts.get("split_seed") if opts.get("split_seed") is not None else opts.get("seed")
    fraction, limit = opts.get("val_fraction"), opts.get("limit")
    if not isinstance(seed, int) or not isinstance(fraction, float):
        raise ScoresError(f"{bundle.path / bundle_fmt.SIDECAR_FILE}: training.options records no split "
                          "(split_seed/seed and val_fraction); its validation images cannot be rebuilt")
    if not (data / "train").is_dir():
        raise ScoresError(f"{data / 'train'}: missing (give --data, the folder the bundle was trained on)")
    samples = first_per_class(list_labelled(data / "train"), limit)
    loaded = load_samples(samples)
    if loaded.skipped:
        raise ScoresError(f"{data / 'train'}: {len(loaded.skipped)} unreadable images (first: "
                          f"{loaded.skipped[0][0]}); the split would not be the bundle's")
    digests = file_digests(samples)
    if recorded.get("train_fingerprint") and fingerprint(samples, data, digests) != recorded["train_fingerprint"]:
        raise ScoresError(f"{data / 'train'}: not the training data this bundle records (fingerprint differs)")
    _fit, val = stratified_split(loaded.labels, fraction, seed)
    val_paths = {loaded.paths[i] for i in val}
    val_fp = fingerprint([s for s in samples if s.path in val_paths], data, digests)
    if recorded.get("validation_fingerprint") and val_fp != recorded["validation_fingerprint"]:
        raise ScoresError(f"{data / 'train'}: the rebuilt validation split is not the bundle's (fingerprint differs)")
    judge = Judge.from_bundle(bundle, num_threads=os.cpu_count() or 1)
    images, labels = loaded.images[val], loaded.labels[val]
    circles = [judge.rim(img) for img in images] if judge.needs_rim else None
    return labels, reject_scores(judge.judge_all(images, circles))


def record(bundle_dir: Path, data: Path) -> dict[str, Any]:
    """Add `validation_scores` to the bundle's model.json; returns what was written."""
    try:
        bundle = bundle_fmt.load(bundle_dir)
    except bundle_fmt.BundleError as exc:
        raise ScoresError(str(exc)) from None
    try:
        labels, scores = validation_scores(bundle, data)
    except DatasetError as exc:
        raise ScoresError(str(exc)) from None
    want = (((bundle.meta.get("metrics") or {}).get("validation") or {}).get("int8") or {}).get("confusion")
    got = _confusion(labels, scores, bundle.threshold)
    if want is not None and got != want:
        raise ScoresError(f"{bundle.path}: validation rebuilt gives confusion {got} at threshold "
                          f"{bundle.threshold:g}, the bundle records {want}; not writing scores that may not be its own")
    rec = score_record(labels, scores)
    meta = dict(bundle.meta)
    meta[SCORES_KEY] = rec
    bundle_fmt.write_sidecar(bundle.path, meta)  # what was written must load
    log.info("validation scores recorded", extra={"bundle": str(bundle.path), "defects": len(rec["defect"]),
                                                  "good": len(rec["ok"]), "confusion": got})
    return rec
