"""Find round castings in a camera frame and crop them framed like the training images.

The CNN was trained on 300x300 top views in which the impeller's outer rim fills a fixed
fraction of the image, roughly centred. A line camera sees parts anywhere, at another
scale and rotation, so each part is located (centre and rim radius) and re-cropped to
that same framing before it reaches the model.

Locating is two-stage, to stay at a few milliseconds per 1280x720 frame on one core:
a Hough circle search (HOUGH_GRADIENT_ALT) on a 4x downscaled copy proposes centres;
each proposal is then refined at full resolution on rays cast from it (a sparse polar
unwrap): the rim is the outermost edge where intensity falls outward on each ray, a
robust circle through those points is refitted at sub-pixel precision, and the share of
rays that agree with it is the score that rejects false proposals (belt texture, noise).
Only `cv2`/`numpy`; deterministic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from edge.vision.circlefit import circle_lsq, ransac_circle
from edge.vision.preprocess import IMAGE_SIZE, to_gray_u8, to_model_input

log = logging.getLogger(__name__)

# Framing of the dataset images (casting_data, 300x300), measured by running
# find_parts(img, DATASET_CONFIG) on 800 images (400 def_front + 400 ok_front drawn at
# random, seed 0, from train/ and test/; all 800 located, one part each):
#   rim diameter / image side: mean 0.810, median 0.811, std 0.035, p1 0.735, p99 0.923
#     (def_front 0.811 +- 0.030, ok_front 0.809 +- 0.039): the parts vary in size;
#   rim centre - image centre: dx +0.000 +- 0.014, dy +0.002 +- 0.014 of the side,
#     i.e. centred to within 1 px on average (4 px spread), so crops are centred exactly.
# "Rim" is the outermost circular edge where intensity falls outward (bright metal to its
# dark outline); the views are slightly oblique, so its diameter is that of the
# least-squares circle through the (mildly elliptical) edge. Re-measure with
# tests/test_locate.py::test_dataset_framing_constant_matches_the_data (40-image check).
RIM_DIAMETER_FRACTION = 0.810
RIM_CENTRE_OFFSET = (0.0, 0.0)  # (dx, dy) of the rim centre from the image centre, fraction of the side


@dataclass(frozen=True)
class LocateConfig:
    """Search range and effort of `find_parts`; defaults suit a 1280x720 line camera."""

    min_diameter: float = 150.0  # rim diameter range in frame pixels
    max_diameter: float = 600.0
    downscale: int = 4  # coarse search runs on a copy this many times smaller
    max_candidates: int = 12  # Hough proposals refined per frame
    n_angles: int = 96  # rays of the polar profile
    min_score: float = 0.5  # fraction of the rim with a consistent edge to accept a part
    min_visible: float = 0.35  # fraction of the rim that must lie inside the frame
    hough_edge: float = 120.0  # Scharr/Canny upper threshold of the coarse search
    hough_roundness: float = 0.55  # HOUGH_GRADIENT_ALT circle perfectness, 0..1
    iterations: int = 2  # rim circle refinements
    rim_polarity: int = -1  # -1: the rim is darker outside (outline, shadow, belt); 0: either
    min_edge: float = 6.0  # grey levels per pixel the rim edge must reach on a ray


# Locating parts inside the dataset images themselves (rim 0.73-0.94 of 300 px; their
# light backdrop gives fainter rim edges than a dark belt, hence the lower min_edge).
DATASET_CONFIG = LocateConfig(min_diameter=180.0, max_diameter=300.0, downscale=2, min_edge=4.0)


@dataclass(frozen=True)
class PartBox:
    """A located part: rim centre and radius in frame pixels (pixel centres at integers)."""

    cx: float
    cy: float
    radius: float
    score: float  # fraction of the visible rim with a consistent edge, 0..1
    fully_in_view: bool


def find_parts(gray: np.ndarray, cfg: LocateConfig = LocateConfig()) -> list[PartBox]:
    """All round parts in a frame (gray or BGR), best score first.

    A part cut by the frame border is returned (fully_in_view False) while at least
    `min_visible` of its rim is inside, so a tracker can follow it in and out.
    """
    gray = to_gray_u8(gray)
    h, w = gray.shape
    f = max(1, int(cfg.downscale))
    small = gray
    if f > 1:
        small = cv2.resize(gray, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
    fx, fy = w / small.shape[1], h / small.shape[0]
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    rmin = cfg.min_diameter / 2
    rmax = cfg.max_diameter / 2
    circles = cv2.HoughCircles(
        small,
        cv2.HOUGH_GRADIENT_ALT,
        dp=1.0,
        minDist=max(2.0, 0.5 * rmin / f),
        param1=cfg.hough_edge,
        param2=cfg.hough_roundness,
        minRadius=max(2, int(0.4 * rmin / f)),
        maxRadius=int(math.ceil(1.05 * rmax / f)),
    )
    if circles is None:
        return []
    found: list[PartBox] = []
    for x, y, _r in circles[0][: cfg.max_candidates]:
        cx, cy = (x + 0.5) * fx - 0.5, (y + 0.5) * fy - 0.5
        if any(math.hypot(cx - b.cx, cy - b.cy) < b.radius for b in found):
            continue  # inside a part already found (its inner rings): parts do not overlap
        box = _refine(gray, cx, cy, cfg)
        if box is None:
            continue
        if any(math.hypot(box.cx - b.cx, box.cy - b.cy) < 0.5 * max(b.radius, box.radius) for b in found):
            continue
        found.append(box)
    found.sort(key=lambda b: -b.score)
    return found


def crop_part(gray: np.ndarray, box: PartBox, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """uint8 crop (height, width) = size framed like the dataset: the located rim's
    diameter is RIM_DIAMETER_FRACTION of the side and its centre sits at the centre.

    Regions beyond the frame are filled by replicating its border (as the model's
    square-padding does), so a part at the edge still yields a full crop.
    """
    gray = to_gray_u8(gray)
    if box.radius <= 0:
        raise ValueError(f"part radius must be positive, got {box.radius}")
    oh, ow = size
    s = RIM_DIAMETER_FRACTION * min(oh, ow) / (2 * box.radius)  # crop px per frame px
    uc = (ow - 1) / 2 + RIM_CENTRE_OFFSET[0] * ow
    vc = (oh - 1) / 2 + RIM_CENTRE_OFFSET[1] * oh
    # Work on the frame region the crop covers (plus a margin), not the whole frame.
    half = max(oh, ow) / 2 / s + 3
    h, w = gray.shape
    x0, y0 = max(0, math.floor(box.cx - half)), max(0, math.floor(box.cy - half))
    x1, y1 = min(w, math.ceil(box.cx + half) + 1), min(h, math.ceil(box.cy + half) + 1)
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"part at ({box.cx:.0f}, {box.cy:.0f}) is outside the {w}x{h} frame")
    sub = gray[y0:y1, x0:x1]
    sx = sy = 1.0
    if s < 1:  # shrink by area averaging first; bilinear warping alone would alias
        nw, nh = max(1, round(sub.shape[1] * s)), max(1, round(sub.shape[0] * s))
        sx, sy = nw / sub.shape[1], nh / sub.shape[0]
        sub = cv2.resize(sub, (nw, nh), interpolation=cv2.INTER_AREA)
    # frame x -> sub x_r = (x - x0 + 0.5) * sx - 0.5; crop u = s * (x - cx) + uc
    m = np.array(
        [
            [s / sx, 0.0, s * (0.5 / sx - 0.5 + x0 - box.cx) + uc],
            [0.0, s / sy, s * (0.5 / sy - 0.5 + y0 - box.cy) + vc],
        ]
    )
    return cv2.warpAffine(sub, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def crop_roi(gray: np.ndarray, roi: tuple[int, int, int, int], size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """Model input from a fixed region of interest (x, y, w, h) of the frame.

    For fixtures that always hold the part in the same place: no locating, the region
    is square-padded and resized exactly as a dataset file would be.
    """
    x, y, rw, rh = (int(v) for v in roi)
    h, w = gray.shape[:2]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + rw), min(h, y + rh)
    if rw <= 0 or rh <= 0 or x0 >= x1 or y0 >= y1:
        raise ValueError(f"roi {roi} does not overlap the {w}x{h} frame")
    return to_model_input(gray[y0:y1, x0:x1], size)


# The locator runs many small searches per part (the rim finder alone ~10 per crop): the tables
# below depend only on the ray count or the point count, so they are computed once, not per search.
@lru_cache(maxsize=16)
def _rays32(n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of n ray angles in float32 (column vectors), for the polar samples."""
    t = np.arange(n, dtype=np.float32) * np.float32(2 * np.pi / n)
    c, s = np.cos(t)[:, None], np.sin(t)[:, None]
    c.flags.writeable = s.flags.writeable = False
    return c, s


@lru_cache(maxsize=16)
def _rays64(n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of n ray angles in float64, for the edge points."""
    t = np.arange(n) * (2 * np.pi / n)
    c, s = np.cos(t), np.sin(t)
    c.flags.writeable = s.flags.writeable = False
    return c, s


_ERODE_5 = np.ones((1, 5), np.uint8)


def _polar(gray: np.ndarray, cx: float, cy: float, radii: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 samples [angle, radius] around (cx, cy) and their in-frame mask."""
    cos, sin = _rays32(n)
    xs = (cx + cos * radii[None, :]).astype(np.float32)
    ys = (cy + sin * radii[None, :]).astype(np.float32)
    h, w = gray.shape
    valid = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    p = cv2.remap(gray, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return p.astype(np.float32), valid


def _radial_edges(
    gray: np.ndarray, cx: float, cy: float, radii: np.ndarray, n: int, polarity: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Radial edge strength on the polar grid (polarity -1: only intensity falling
    outward, +1: only rising, 0: either), and where it is trustworthy."""
    p, valid = _polar(gray, cx, cy, radii, n)
    step = float(radii[1] - radii[0])
    p = cv2.GaussianBlur(p, (0, 1), sigmaX=max(0.8, 1.2 / step), sigmaY=0)
    d = np.zeros_like(p)
    d[:, 1:-1] = (p[:, 2:] - p[:, :-2]) * (0.5 / step)
    if polarity < 0:
        d = np.maximum(-d, 0)
    elif polarity > 0:
        d = np.maximum(d, 0)
    else:
        d = np.abs(d)
    # distrust samples whose smoothing/derivative window reaches outside the frame
    valid = cv2.erode(valid.astype(np.uint8), _ERODE_5, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    return d, valid


# A crop framed like the dataset, at half size: its rim is 0.65-0.98 of the side.
_FRAMED_CONFIG = LocateConfig(min_diameter=90.0, max_diameter=150.0, min_edge=4.0, n_angles=48)
# The same at full size (300 px): it sees the rim's thin dark outline that the half-size copy
# blurs into a light backdrop, but also the edges of a textured one.
_FRAMED_FULL_CONFIG = replace(_FRAMED_CONFIG, min_diameter=180.0, max_diameter=300.0)
FULL_SIZE_WINS = 1.04  # a full-size rim this much larger than the half-size one, and as convincing, is the rim
# How a crop's rim is searched; a bundle names the one its model was trained with
# (model.json `input.part_only.finder`; absent: "half", the bundles made before "combined").
RIM_FINDERS = ("half", "combined")


def find_rim_in_crop(crop: np.ndarray, finder: str = "half") -> PartBox | None:
    """The rim of the part a crop (or dataset image) is framed on, in the crop's pixels, or None.

    "half": looked for around the crop's centre on a half-size copy (0.5 ms against 3 ms for
    a full find_parts), which is immune to a textured belt's edges. On a light backdrop the
    rim's thin dark outline blurs away at half size and the outermost falling edge found is
    an inner ring, up to 22 px inside the rim. "combined" repeats the search at full size
    (300 px) and takes its circle when it lies clearly outside the half-size one (by
    FULL_SIZE_WINS) with at least the same share of the rim agreeing, or when the half-size
    search found none. With the half-finder's weights on the line-condition validation sets:
    summed cost 628 -> 549 (light belt 80 -> 48, woven 28 -> 25); full size alone gave 1047
    (woven 522). A model must be trained with the finder it runs with: docs/training.md.
    """
    if finder not in RIM_FINDERS:
        raise ValueError(f"rim finder {finder!r}: choose one of {', '.join(RIM_FINDERS)}")
    gray = to_gray_u8(crop)
    half = _rim_at(gray, 150, _FRAMED_CONFIG)
    if finder == "half":
        return half
    full = _rim_at(gray, 300, _FRAMED_FULL_CONFIG)
    if half is None:
        return full
    if full is not None and full.radius > half.radius * FULL_SIZE_WINS and full.score >= half.score:
        return full
    return half


def rim_searches(crop: np.ndarray) -> list[PartBox]:
    """Every rim the crop searches find: half and full size, the rim darker outside or either way.

    For a second look where the first rim left the guard unable to vouch for the part (a light
    belt's inner ring or edge taken for the rim; edge.inference.judge). About 5 ms, on faults only.
    """
    gray = to_gray_u8(crop)
    found = (_rim_at(gray, side, replace(cfg, rim_polarity=polarity))
             for side, cfg in ((150, _FRAMED_CONFIG), (300, _FRAMED_FULL_CONFIG)) for polarity in (-1, 0))
    return [box for box in found if box is not None]


def _rim_at(gray: np.ndarray, side: int, cfg: LocateConfig) -> PartBox | None:
    """find_rim_in_crop's search on a side x side copy, the circle scaled back to the crop's pixels."""
    h, w = gray.shape
    small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA) if (h, w) != (side, side) else gray
    c = (side - 1) / 2
    box = _refine(small, c, c, cfg)
    if box is None:
        return None
    sx, sy = w / side, h / side
    return replace(box, cx=(box.cx + 0.5) * sx - 0.5, cy=(box.cy + 0.5) * sy - 0.5, radius=box.radius * (sx + sy) / 2)


def framed_part(crop: np.ndarray) -> bool:
    """Whether a model-input crop holds a whole part framed like the training images.

    For a fixed ROI (no search). On the dataset's 7,348 images it misses 2 (both defects;
    a miss is a fail-safe reject) and finds no part on 200 empty belts.
    """
    box = find_rim_in_crop(crop)
    return box is not None and box.fully_in_view


def part_near(gray: np.ndarray, box: PartBox, cfg: LocateConfig = LocateConfig()) -> PartBox | None:
    """The part whose rim is around `box` (a predicted position) in this frame, or None.

    Rays from the predicted centre look for a rim of about the predicted radius (+-15%), so
    a part that stopped or slowed is found where it really is, at a fraction of a full
    search's cost; a neighbour, at least two radii away, is not what the rays converge on.
    """
    r = box.radius
    near = replace(cfg, min_diameter=2 * 0.85 * r, max_diameter=2 * 1.15 * r)
    found = _refine(to_gray_u8(gray), box.cx, box.cy, near)
    if found is None or math.hypot(found.cx - box.cx, found.cy - box.cy) > r:
        return None
    return found


def _refine(gray: np.ndarray, cx: float, cy: float, cfg: LocateConfig) -> PartBox | None:
    """Rim of the part around a proposed centre, or None if there is no convincing one.

    The proposal's centre can be several pixels off (Hough votes of the inner rings,
    which are not exactly concentric with the rim in the dataset's views), so the rim is
    first found ray by ray: on each ray the outermost clear edge where intensity falls
    outward (bright metal to its dark outline, shadow or a darker belt). A robust circle
    through those points is then refined on a narrow band around it.
    """
    rmin, rmax = cfg.min_diameter / 2, cfg.max_diameter / 2
    n = cfg.n_angles
    step = max(1.0, rmax / 200)
    radii = np.arange(0.85 * rmin, 1.15 * rmax, step, dtype=np.float32)
    d, valid = _radial_edges(gray, cx, cy, radii, n, cfg.rim_polarity)
    pts = _outermost_edges(d, valid, radii, cfg.min_edge)
    cos, sin = _rays64(n)
    ok = ~np.isnan(pts)
    if ok.sum() < 8:
        return None
    xs, ys = cx + cos[ok] * pts[ok], cy + sin[ok] * pts[ok]
    circle = ransac_circle(xs, ys, rmin * 0.9, rmax * 1.1)
    if circle is None:
        return None
    cx, cy, r = circle
    score = visible = 0.0
    for _ in range(max(1, cfg.iterations)):
        fit = _fit_ring(gray, cx, cy, r, n, cfg.rim_polarity, cfg.min_edge)
        if fit is None:
            return None
        cx, cy, r, score, visible = fit
    if not (rmin <= r <= rmax) or visible < cfg.min_visible or score < cfg.min_score:
        extra = {"cx": round(cx, 1), "cy": round(cy, 1), "r": round(r, 1), "score": round(score, 2)}
        log.debug("rejected rim", extra=extra)
        return None
    h, w = gray.shape
    inside = cx - r >= 0 and cy - r >= 0 and cx + r <= w - 1 and cy + r <= h - 1
    return PartBox(float(cx), float(cy), float(r), float(score), bool(inside))


def _outermost_edges(
    d: np.ndarray, valid: np.ndarray, radii: np.ndarray, min_edge: float, subpixel: bool = False
) -> np.ndarray:
    """Per ray, the radius of the outermost local edge maximum >= min_edge (NaN if none)."""
    inner = d[:, 1:-1]
    peak = (inner >= d[:, :-2]) & (inner > d[:, 2:]) & (inner >= min_edge) & valid[:, 1:-1]
    any_peak = peak.any(axis=1)
    i = peak.shape[1] - np.argmax(peak[:, ::-1], axis=1)  # index into d of the last peak
    out = radii[i].astype(np.float64)
    if subpixel:  # parabola through the peak and its neighbours
        rows = np.arange(len(i))
        a, b, c = d[rows, i - 1], d[rows, i], d[rows, i + 1]
        den = a - 2 * b + c
        off = np.where(den < -1e-6, 0.5 * (a - c) / np.where(den < -1e-6, den, -1.0), 0.0)
        out += np.clip(off, -0.5, 0.5) * float(radii[1] - radii[0])
    out[~any_peak] = np.nan
    return out


def _fit_ring(gray: np.ndarray, cx: float, cy: float, r: float, n: int, polarity: int, min_edge: float):
    """Refit the rim near circle (cx, cy, r) at sub-pixel precision.

    Returns (cx, cy, r, score, visible): score is the fraction of in-frame rays whose
    edge lies on the fitted circle, visible the fraction of rays inside the frame.
    """
    half = max(4.0, 0.08 * r)
    step = max(0.5, r / 250)
    radii = np.arange(r - half, r + half, step, dtype=np.float32)
    d, valid = _radial_edges(gray, cx, cy, radii, n, polarity)
    rr = _outermost_edges(d, valid, radii, min_edge, subpixel=True)
    ray_in = valid[:, len(radii) // 2]
    visible = float(ray_in.mean())
    cos, sin = _rays64(n)
    has = ~np.isnan(rr)
    r0 = np.where(has, rr, 0.0)
    xs, ys = cx + cos * r0, cy + sin * r0
    # 5%: the dataset's views are slightly oblique, rims are mild ellipses (axis ratio
    # down to ~0.93); the least-squares circle of an ellipse has its centre and mean radius.
    tol = max(1.5, 0.05 * r)
    use = has & (np.abs(rr - r) <= tol)
    ccx, ccy, cr = cx, cy, r
    for _ in range(2):
        if use.sum() < 8:
            return None
        ccx, ccy, cr = circle_lsq(xs[use], ys[use])
        res = np.abs(np.hypot(xs - ccx, ys - ccy) - cr)
        use = has & (res <= tol)
    score = float(use.sum() / max(1, ray_in.sum()))
    return ccx, ccy, cr, min(score, 1.0), visible
