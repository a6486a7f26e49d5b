"""A threshold that is not the bundle's: what it changes, and when it is refused.

The bundle's threshold was chosen on validation by its recorded rule. An override in
the config (`model.threshold`) moves every decision near it, so it is judged against
the bundle's own validation scores (`validation_scores` in model.json, written by
`edge-train fit` or `edge-train scores`): how many validation defects it would accept
and how many good parts it would reject. An override that lets through a defect the
bundle's threshold rejects is refused unless `model.accept_validation_escapes` names at
least that many; one the bundle has no scores to judge is refused when it is more
lenient than the bundle's. The same check runs at start, on SIGHUP and in
`--check-config`, and its figures are in status and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCORES_KEY = "validation_scores"


class ThresholdRefused(ValueError):
    """The configured threshold may not run on this bundle; the message says why and what would allow it."""


def score_record(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """What model.json keeps of validation: each class's decision scores, sorted (a guard fault scores 1.0).

    Exact values, not a histogram, so any threshold can be judged exactly.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    if y.shape != s.shape or not np.isfinite(s).all():
        raise ValueError("validation scores: labels and finite scores of the same length needed")
    return {"what": "decision score per validation image (p_defect; 1.0 = guard fault, a reject at any threshold)",
            "defect": sorted(round(float(v), 6) for v in s[y]),
            "ok": sorted(round(float(v), 6) for v in s[~y])}


@dataclass(frozen=True)
class ThresholdCheck:
    """The threshold in force beside the bundle's, with validation figures where the bundle has them."""

    threshold: float
    bundle_threshold: float
    defects: int | None = None  # validation images per class; None without recorded scores
    goods: int | None = None
    escapes: int | None = None  # validation defects accepted at `threshold`
    false_rejects: int | None = None
    bundle_escapes: int | None = None
    bundle_false_rejects: int | None = None
    acknowledged_escapes: int | None = None

    @property
    def overridden(self) -> bool:
        return self.threshold != self.bundle_threshold

    def to_status(self) -> dict[str, Any]:
        return {"value": self.threshold, "bundle": self.bundle_threshold, "override": self.overridden,
                "validation": None if self.defects is None else {
                    "defects": self.defects, "good": self.goods,
                    "escapes": self.escapes, "false_rejects": self.false_rejects,
                    "escapes_at_bundle": self.bundle_escapes, "false_rejects_at_bundle": self.bundle_false_rejects},
                "acknowledged_escapes": self.acknowledged_escapes}

    def describe(self) -> str:
        if not self.overridden:
            return f"threshold {self.threshold:g} (the bundle's)"
        if self.defects is None:
            return (f"threshold {self.threshold:g} overrides the bundle's {self.bundle_threshold:g}; "
                    "the bundle records no validation scores to say what that changes")
        return (f"threshold {self.threshold:g} overrides the bundle's {self.bundle_threshold:g}: on the bundle's "
                f"validation it accepts {self.escapes} of {self.defects} defects (bundle's: {self.bundle_escapes}) "
                f"and rejects {self.false_rejects} of {self.goods} good parts (bundle's: {self.bundle_false_rejects})")


def _count(scores: Sequence[float], threshold: float, below: bool) -> int:
    s = np.asarray(scores, np.float64)
    return int((s < threshold).sum() if below else (s >= threshold).sum())


def recorded_scores(meta: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    rec = meta.get(SCORES_KEY)
    if not isinstance(rec, Mapping):
        return None
    d, g = rec.get("defect"), rec.get("ok")
    ok = (isinstance(d, list) and isinstance(g, list) and d and g
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d + g))
    return (d, g) if ok else None


def check(meta: Mapping[str, Any], threshold: float | None, acknowledged_escapes: int | None = None,
          key: str = "model.threshold") -> ThresholdCheck:
    """Judge `threshold` (None: the bundle's) against the bundle's validation; ThresholdRefused if unsafe."""
    bundle_t = float(meta["threshold"])
    t = bundle_t if threshold is None else float(threshold)
    scores = recorded_scores(meta)
    if scores is None:
        result = ThresholdCheck(t, bundle_t, acknowledged_escapes=acknowledged_escapes)
        if t > bundle_t:
            raise ThresholdRefused(
                f"{key}: {t:g} is more lenient than the bundle's validated threshold {bundle_t:g}, and the bundle "
                "records no validation scores to show how many defects that would accept; refusing. Use the "
                "bundle's threshold (remove the key), a lower one, or record its scores with `edge-train scores`")
        return result
    defect, good = scores
    result = ThresholdCheck(
        t, bundle_t, len(defect), len(good),
        escapes=_count(defect, t, below=True), false_rejects=_count(good, t, below=False),
        bundle_escapes=_count(defect, bundle_t, below=True), bundle_false_rejects=_count(good, bundle_t, below=False),
        acknowledged_escapes=acknowledged_escapes)
    assert result.escapes is not None and result.bundle_escapes is not None
    if result.escapes > result.bundle_escapes and (acknowledged_escapes is None
                                                   or acknowledged_escapes < result.escapes):
        ack_key = key.rpartition(".")[0] + ".accept_validation_escapes"
        ack = "" if acknowledged_escapes is None else f" ({ack_key} is {acknowledged_escapes})"
        raise ThresholdRefused(
            f"{key}: {t:g} would accept {result.escapes} of the bundle's {len(defect)} validation defects "
            f"(its own threshold {bundle_t:g} accepts {result.bundle_escapes}){ack}; refusing. To run it anyway, "
            f"set {ack_key}: {result.escapes}")
    return result


def announce(result: ThresholdCheck, model_id: str) -> None:
    """One log line at start and on reload: an override is a WARNING, never silent."""
    if result.overridden:
        log.warning(f"model {model_id}: {result.describe()}", extra={"model": model_id, **{
            k: v for k, v in result.to_status().items() if k != "validation"}})
