import itertools

import numpy as np

from edge.offline.metrics import confusion, roc_auc, summarize


def test_confusion_rows_are_actual_columns_predicted() -> None:
    assert confusion(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 1])) == [[1, 1], [1, 2]]


def test_roc_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    assert abs(roc_auc(labels, scores) - np.mean(pairs)) < 1e-12
    assert roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])) is None


def test_summarize_counts_escapes_and_false_rejects() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7])
    m = summarize(labels, p, 0.5)
    assert m["confusion"] == [[3, 1], [1, 3]]
    assert (m["false_accepts"], m["false_rejects"]) == (1, 1)
    assert m["accuracy"] == 0.75 and m["defect_recall"] == 0.75 and m["precision"] == 0.75
    assert m["per_class"]["ok_front"]["recall"] == 0.75
    assert m["roc_auc"] == 0.9375  # 15 of 16 (defect, ok) pairs ranked right
    # p exactly at the threshold is a reject
    assert summarize(np.array([1]), np.array([0.5]), 0.5)["false_accepts"] == 0
