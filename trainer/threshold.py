"""Choose the operating threshold on validation data (never on test).

The policies themselves (`cost:R`, `recall:X`) live in edge.inference.policy, so that a recipe
on the edge box chooses from a bundle's recorded validation scores exactly as the trainer does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.inference.policy import DEFAULT_POLICY, GRID, Policy, PolicyError, choose, parse_policy

__all__ = ["DEFAULT_POLICY", "GRID", "Policy", "PolicyError", "choose", "evidence", "parse_policy"]


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
