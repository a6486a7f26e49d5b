"""Binary classification metrics, defect (label 1) being the positive class.

numpy only, so the trainer's evaluation and the edge's replay compute identical numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion(labels: np.ndarray, predicted: np.ndarray) -> list[list[int]]:
    """[[ok->ok, ok->defect], [defect->ok, defect->defect]]: rows actual, columns predicted."""
    labels = np.asarray(labels).astype(int)
    predicted = np.asarray(predicted).astype(int)
    m = np.zeros((2, 2), dtype=int)
    np.add.at(m, (labels, predicted), 1)
    return m.tolist()


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under ROC via the rank-sum statistic, ties counted half; None if one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def summarize(labels: np.ndarray, p_defect: np.ndarray, threshold: float) -> dict[str, Any]:
    """Everything a quality engineer asks for, at one operating threshold."""
    labels = np.asarray(labels).astype(int)
    p = np.asarray(p_defect, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion(labels, pred)
    n = len(labels)
    per_class = {
        "ok_front": {
            "precision": _ratio(tn, tn + fn),
            "recall": _ratio(tn, tn + fp),
            "support": tn + fp,
        },
        "def_front": {
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "support": tp + fn,
        },
    }
    for c in per_class.values():
        pr, rc = c["precision"], c["recall"]
        c["f1"] = round(2 * pr * rc / (pr + rc), 4) if pr and rc else 0.0
    auc = roc_auc(labels, p)
    return {
        "n": n,
        "threshold": threshold,
        "accuracy": _ratio(tp + tn, n),
        "confusion": [[tn, fp], [fn, tp]],
        "false_accepts": fn,  # defective parts passed to the customer
        "false_rejects": fp,  # good parts sent to re-cast
        "defect_recall": per_class["def_front"]["recall"],
        "escape_rate": _ratio(fn, tp + fn),
        "precision": per_class["def_front"]["precision"],
        "f1": per_class["def_front"]["f1"],
        "per_class": per_class,
        "roc_auc": None if auc is None else round(auc, 6),
    }
