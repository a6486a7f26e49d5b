"""Threshold policies: a validated threshold from a bundle's validation scores.

Shared by the trainer (which chooses a bundle's threshold on validation, never on test) and
the edge (a recipe's `threshold_policy` chooses again on the scores the bundle recorded), so
both pick the same threshold from the same scores.

Policies:
- ``cost:R`` (default ``cost:20``): minimise R * false accepts + false rejects, R being
  what a defective casting shipped costs relative to a good one re-cast.
- ``recall:X``: the highest threshold whose validation defect recall is >= X.
Among equally good thresholds the middle of the lowest such run is taken: a margin on
both sides, leaning towards rejecting.

The thresholds tried follow what the model outputs (model.json `output.represents`): a quantized
probability takes the values k/256, so those are its grid; a quantized logit is finer where the
threshold lies (near p 0.01 a probability's steps are 25-100% of p), so its grid is a fine one in
logit space (edge.vision.partview.OUTPUTS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_POLICY = "cost:20"
GRID = 256  # uint8 output quantization: p_defect takes values k/256
LOGIT_GRID_STEP = 1 / 32  # a logit output's thresholds: sigmoid of multiples of this ...
LOGIT_GRID_LIMIT = 12.0  # ... within +-12 (p 6e-6 .. 1 - 6e-6), and 1.0


def _grids() -> dict[str, np.ndarray]:
    n = round(LOGIT_GRID_LIMIT / LOGIT_GRID_STEP)
    z = np.arange(-n, n + 1) * LOGIT_GRID_STEP
    grids = {"p_defect": np.arange(1, GRID + 1) / GRID, "logit": np.r_[1.0 / (1.0 + np.exp(-z)), 1.0]}
    for g in grids.values():
        g.flags.writeable = False  # shared by every call
    return grids


_GRIDS = _grids()


def threshold_grid(output: str = "p_defect") -> np.ndarray:
    """The thresholds a policy chooses from, ascending, for a model whose output is `output`."""
    if output not in _GRIDS:
        raise PolicyError(f"model output {output!r}: expected {' or '.join(_GRIDS)}")
    return _GRIDS[output]


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Policy:
    kind: str  # "cost" or "recall"
    value: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def parse_policy(text: str) -> Policy:
    """`cost:R` or `recall:X`; PolicyError naming the text otherwise. R must be finite: an
    infinite cost makes every score inf or nan (inf x 0), and the threshold chosen on those
    would be meaningless."""
    kind, _, value = text.partition(":")
    try:
        v = float(value)
    except ValueError:
        raise PolicyError(f"threshold policy {text!r}: expected cost:R or recall:X") from None
    if kind == "cost" and math.isfinite(v) and v > 0:
        return Policy("cost", v)
    if kind == "recall" and 0 < v <= 1:
        return Policy("recall", v)
    raise PolicyError(f"threshold policy {text!r}: expected cost:R (R finite and > 0) or recall:X (0 < X <= 1)")


def errors_per_threshold(labels: np.ndarray, p_defect: np.ndarray,
                         output: str = "p_defect") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The output's threshold grid and, at each of its thresholds, the false accepts and false rejects."""
    labels = np.asarray(labels).astype(bool)
    p = np.asarray(p_defect, dtype=np.float64)
    grid = threshold_grid(output)
    rejects = p[None, :] >= grid[:, None] - 1e-9  # grid spacing >= 1e-7: the tolerance stays inside a step
    fa = (~rejects & labels[None, :]).sum(axis=1)
    fr = (rejects & ~labels[None, :]).sum(axis=1)
    return grid, fa, fr


def middle_of_first_run(grid: np.ndarray, ok: np.ndarray) -> float:
    """The middle of the lowest run of acceptable thresholds: a margin on both sides."""
    first = int(np.argmax(ok))
    last = first
    while last + 1 < len(ok) and ok[last + 1]:
        last += 1
    return float(grid[(first + last) // 2])


def choose(labels: np.ndarray, p_defect: np.ndarray, policy: Policy, output: str = "p_defect") -> float:
    """Threshold t (reject when p >= t) on the grid of the int8 output (`threshold_grid(output)`)."""
    grid, fa, fr = errors_per_threshold(labels, p_defect, output)
    if policy.kind == "cost":
        score = policy.value * fa + fr
        return middle_of_first_run(grid, score == score.min())
    recall = 1 - fa / max(int(np.asarray(labels).astype(bool).sum()), 1)
    ok = recall >= policy.value - 1e-12
    return float(grid[ok].max()) if ok.any() else float(grid[0])
