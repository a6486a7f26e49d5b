"""Choose the operating threshold on validation data (never on test).

The policies themselves (`cost:R`, `recall:X`) live in edge.inference.policy, so that a recipe
on the edge box chooses from a bundle's recorded validation scores exactly as the trainer does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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

__all__ = ["DEFAULT_POLICY", "GRID", "THRESHOLD_RULES", "AdaptedThreshold", "Policy", "PolicyError",
           "adapted_threshold", "choose", "evidence", "keep_old_line", "lower_by", "parse_policy", "parse_rule"]

# How `edge-train adapt` sets the adapted bundle's threshold. keep-old-line: the policy on the
# new line's out-of-fold scores, among the thresholds at which the original validation keeps the
# base's escapes and errors (keep_old_line); union: the policy on both sets together (the rule
# until 2026-12-06); margin:D: keep-old-line's threshold lowered by D in logit space (sigmoid(logit(t) - D)),
# because the out-of-fold edge of a few dozen defects is not the edge of the line's next hundreds.
THRESHOLD_RULES = ("keep-old-line", "union", "margin:D")


def parse_rule(text: str) -> tuple[str, float]:
    """(rule, margin D) from `keep-old-line`, `union` or `margin:D` (D finite, 0 <= D <= 10);
    PolicyError naming the text otherwise."""
    if text in ("keep-old-line", "union"):
        return text, 0.0
    kind, sep, value = text.partition(":")
    try:
        d = float(value) if kind == "margin" and sep else math.nan
    except ValueError:
        d = math.nan
    if not (0 <= d <= 10):
        raise PolicyError(f"threshold rule {text!r}: expected keep-old-line, union or margin:D "
                          "(D in logits, 0 to 10)")
    return "margin", d


def lower_by(threshold: float, margin: float) -> float:
    """`threshold` lowered by `margin` in logit space (0 < result <= threshold)."""
    t = min(max(threshold, 1e-9), 1 - 1e-9)
    return float(1 / (1 + math.exp(-(math.log(t / (1 - t)) - margin))))


@dataclass(frozen=True)
class AdaptedThreshold:
    threshold: float
    kept: bool | None  # keep-old-line's bar kept on the original validation; None under `union`
    before_margin: float  # the threshold the rule chose before its margin (== threshold without one)


def adapted_threshold(rule: str, new_labels: np.ndarray, new_scores: np.ndarray, old_labels: np.ndarray,
                      old_scores: np.ndarray, bar: tuple[int, int], policy: Policy,
                      output: str = "p_defect") -> AdaptedThreshold:
    """An adapted bundle's threshold by `rule` (THRESHOLD_RULES) from the new line's out-of-fold scores
    and the adapted model's scores on the original validation (`bar`: the base's escapes and errors there),
    on the grid of the model's `output`."""
    name, margin = parse_rule(rule)
    t, kept = None, None
    if name in ("keep-old-line", "margin"):
        t = keep_old_line(new_labels, new_scores, old_labels, old_scores, bar, policy, output)
        kept = t is not None
    if t is None:
        t = choose(np.concatenate([new_labels, old_labels]), np.concatenate([new_scores, old_scores]), policy,
                   output)
    return AdaptedThreshold(lower_by(t, margin) if margin else t, kept, t)


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
                  old_scores: np.ndarray, bar: tuple[int, int], policy: Policy,
                  output: str = "p_defect") -> float | None:
    """An adapted bundle's threshold: the policy's choice on the new line's (out-of-fold) scores,
    among the thresholds at which the old line's validation keeps the base's bar, `bar` =
    (escapes, errors) of the base there: no more defects accepted and no more parts wrong.
    None where no threshold keeps it (the caller says so and falls back).

    Why: one policy over the union of both sets let the hardest new-line defects pull the
    threshold down until the old line lost parts the base decided right (issue 20)."""
    grid, fa_old, fr_old = errors_per_threshold(old_labels, old_scores, output)
    kept = (fa_old <= bar[0]) & (fa_old + fr_old <= bar[1])
    if not kept.any():
        return None
    _, fa, fr = errors_per_threshold(new_labels, new_scores, output)
    if policy.kind == "recall":
        recall = 1 - fa / max(int(np.asarray(new_labels).astype(bool).sum()), 1)
        ok = kept & (recall >= policy.value - 1e-12)
        return float(grid[ok].max()) if ok.any() else float(grid[kept].min())
    score = np.where(kept, policy.value * fa + fr, np.inf)
    return middle_of_first_run(grid, score == score.min())
