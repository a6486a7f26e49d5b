"""Circles through a locator's edge points: robust (RANSAC) and least squares.

Split from edge.vision.locate, which finds the points; only numpy, deterministic (a fixed seed).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_RNG_SEED = 20240611  # fixed: the locator must be deterministic


@lru_cache(maxsize=256)
def _triples(trials: int, m: int) -> np.ndarray:
    """RANSAC's 3 distinct point indices per trial: fixed by the seed, so the same for every search of m points."""
    idx = np.random.default_rng(_RNG_SEED).random((trials, m)).argsort(axis=1)[:, :3]
    idx.flags.writeable = False
    return idx


def ransac_circle(
    xs: np.ndarray, ys: np.ndarray, rlo: float, rhi: float, trials: int = 96
) -> tuple[float, float, float] | None:
    """Circle through most points (RANSAC, tolerance 5% of r), refitted on its inliers.

    Rays whose outermost edge is not the rim (a defect, a neighbour, the hub where the
    rim edge is faint) are outliers; a plain least-squares fit would be pulled by them.
    """
    m = len(xs)
    idx = _triples(trials, m)
    x1, x2, x3 = xs[idx[:, 0]], xs[idx[:, 1]], xs[idx[:, 2]]
    y1, y2, y3 = ys[idx[:, 0]], ys[idx[:, 1]], ys[idx[:, 2]]
    den = 2 * (x1 * (y2 - y3) + x2 * (y3 - y1) + x3 * (y1 - y2))
    good = np.abs(den) > 1e-6
    den = np.where(good, den, 1.0)
    s1, s2, s3 = x1 * x1 + y1 * y1, x2 * x2 + y2 * y2, x3 * x3 + y3 * y3
    ux = (s1 * (y2 - y3) + s2 * (y3 - y1) + s3 * (y1 - y2)) / den
    uy = (s1 * (x3 - x2) + s2 * (x1 - x3) + s3 * (x2 - x1)) / den
    r = np.hypot(x1 - ux, y1 - uy)
    good &= (r >= rlo) & (r <= rhi)
    if not good.any():
        return None
    res = np.abs(np.hypot(xs[None, :] - ux[:, None], ys[None, :] - uy[:, None]) - r[:, None])
    inl = (res <= np.maximum(2.0, 0.05 * r)[:, None]) & good[:, None]
    best = int(inl.sum(axis=1).argmax())
    use = inl[best]
    if use.sum() < max(6, 0.25 * m):
        return None
    return circle_lsq(xs[use], ys[use])


def circle_lsq(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) circle fit.

    By least squares, not the equivalent closed form (less per-call overhead): that one
    differs in the last bits, and in 24 of 23,028 searches on the dataset's crops those bits
    tipped a later comparison and the circle with it; the shipped weights were trained on these."""
    a = np.column_stack([x, y, np.ones_like(x)])
    b = x * x + y * y
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = sol[0] / 2, sol[1] / 2
    r = math.sqrt(max(sol[2] + cx * cx + cy * cy, 0.0))
    return float(cx), float(cy), r
