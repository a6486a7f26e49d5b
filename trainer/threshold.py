"""Choose the operating threshold on validation data (never on test).

The policies themselves (`cost:R`, `recall:X`) live in edge.inference.policy, so that a recipe
on the edge box chooses from a bundle's recorded validation scores exactly as the trainer does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.inference.policy import (
    DEFAULT_POLICY,
    GRID,
    Policy,
    PolicyError,
    choose,
    errors_per_threshold,
    middle_of_first_run,
    parse_policy,
)

__all__ = ["DEFAULT_POLICY", "GRID", "THRESHOLD_RULES", "Policy", "PolicyError", "choose", "evidence",
           "keep_old_line", "parse_policy"]

# How `edge-train adapt` sets the adapted bundle's threshold. keep-old-line: the policy on the
# new line's out-of-fold scores, among the thresholds at which the original validation keeps the
# base's escapes and errors (keep_old_line); union: the policy on both sets together (the rule
# until 2026-12-06).
THRESHOLD_RULES = ("keep-old-line", "union")


def evidence(labels: np.ndarray, p_defect: np.ndarray, names: list[str], threshold: float,
             n: int = 5) -> dict[str, Any]:
    """The validation images nearest the threshold from each side: with few hard defects in
    validation, one or two of them set the threshold, and whoever owns it should see which."""
    labels = np.asarray(labels).astype(bool)
    p = np.asarray(p_defect, dtype=np.float64)
    defects, good = np.flatnonzero(labels), np.flatnonzero(~labels)
    low = defects[np.argsort(p[defects], kind="stable")][:n]
    high = good[np.argsort(-p[good], kind="stable")][:n]
    return {
        "threshold": threshold,
        "lowest_defects": [{"image": names[i], "p_defect": round(float(p[i]), 4)} for i in low],
        "highest_good": [{"image": names[i], "p_defect": round(float(p[i]), 4)} for i in high],
        "good_at_or_above_lowest_defect": int((p[good] >= p[low[0]]).sum()) if len(low) else 0,
    }


def keep_old_line(new_labels: np.ndarray, new_scores: np.ndarray, old_labels: np.ndarray,
                  old_scores: np.ndarray, bar: tuple[int, int], policy: Policy) -> float | None:
    """An adapted bundle's threshold: the policy's choice on the new line's (out-of-fold) scores,
    among the thresholds at which the old line's validation keeps the base's bar, `bar` =
    (escapes, errors) of the base there: no more defects accepted and no more parts wrong.
    None where no threshold keeps it (the caller says so and falls back).

    Why: one policy over the union of both sets let the hardest new-line defects pull the
    threshold down until the old line lost parts the base decided right (issue 20)."""
    grid, fa_old, fr_old = errors_per_threshold(old_labels, old_scores)
    kept = (fa_old <= bar[0]) & (fa_old + fr_old <= bar[1])
    if not kept.any():
        return None
    _, fa, fr = errors_per_threshold(new_labels, new_scores)
    if policy.kind == "recall":
        recall = 1 - fa / max(int(np.asarray(new_labels).astype(bool).sum()), 1)
        ok = kept & (recall >= policy.value - 1e-12)
        return float(grid[ok].max()) if ok.any() else float(grid[kept].min())
    score = np.where(kept, policy.value * fa + fr, np.inf)
    return middle_of_first_run(grid, score == score.min())
