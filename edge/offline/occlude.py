"""Seeded covers over a part: a hand, a glove or a tool reaching into the camera's view.

For measuring the guard (edge.inference.guard): each cover enters from a random side and hides a
chosen share of the part's disk (by area, measured on the rim circle), so "a third or more
covered" is a fact of the generated image, not an estimate. Pure numpy/OpenCV.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.vision.partview import Circle, disk_mask, drawing_rim

KINDS = ("hand", "glove", "tool")


def _band_share(half: float) -> float:
    """Share of a disk hidden by a band through its centre `half` radii to each side."""
    h = min(max(half, 0.0), 1.0)
    return (2 / math.pi) * (math.asin(h) + h * math.sqrt(1 - h * h))


def _tool_width(share: float, seed: int) -> float:
    """A tool bar's width in radii: 0.9-1.3 (seeded), widened where a narrower bar could not hide `share`."""
    width = float(np.random.default_rng(seed).uniform(0.9, 1.3))
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _band_share(mid) < share else (lo, mid)
    return min(2.0, max(width, 2 * hi + 0.04))


def _cover_shape(shape: tuple[int, int], c: Circle, depth: float, angle: float, kind: str,
                 rng: np.random.Generator, tool_width: float = 1.0) -> np.ndarray:
    """Float mask 0..1 of a cover entering along direction `angle`, reaching `depth` radii into the disk."""
    h, w = shape
    m = np.zeros((h, w), np.uint8)
    ux, uy = math.cos(angle), math.sin(angle)  # from the centre towards where the cover comes from
    # the cover's front edge: a line at distance (1 - depth) r from the centre, facing inwards
    fx, fy = c.cx + ux * (1 - depth) * c.r, c.cy + uy * (1 - depth) * c.r
    far = 3 * max(h, w)
    px, py = -uy, ux  # along the front edge
    if kind == "tool":  # a straight bar: a band across the part
        width = c.r * tool_width
        p = [(fx + px * far, fy + py * far), (fx - px * far, fy - py * far),
             (fx - px * far + ux * width, fy - py * far + uy * width),
             (fx + px * far + ux * width, fy + py * far + uy * width)]
        cv2.fillPoly(m, [np.array(p, np.int32)], 255)
    else:  # a palm (ellipse) behind the front edge, and fingers reaching past it
        palm_c = (fx + ux * c.r * 0.9, fy + uy * c.r * 0.9)
        axes = (int(c.r * 1.1), int(c.r * rng.uniform(0.8, 1.1)))
        cv2.ellipse(m, (int(palm_c[0]), int(palm_c[1])), axes, math.degrees(angle), 0, 360, 255, -1)
        p = [(fx + px * far, fy + py * far), (fx - px * far, fy - py * far),
             (fx - px * far + ux * far, fy - py * far + uy * far), (fx + px * far + ux * far, fy + py * far + uy * far)]
        cv2.fillPoly(m, [np.array(p, np.int32)], 255)
        for k in range(4):
            off = (k - 1.5) * c.r * 0.22
            length = c.r * rng.uniform(0.15, 0.35)
            a = (fx + px * off, fy + py * off)
            b = (a[0] - ux * length, a[1] - uy * length)
            cv2.line(m, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 255, max(2, int(c.r * 0.16)))
    return cv2.GaussianBlur(m.astype(np.float32) / 255.0, (0, 0), 1.2)


def _texture(shape: tuple[int, int], kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    if kind == "hand":
        level = rng.uniform(90, 200)
        shade = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 12) * 60
        return level + shade
    if kind == "glove":
        level = rng.uniform(40, 220)
        knit = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.0) * 25
        return level + knit
    level = rng.uniform(30, 120)  # a dark steel tool with a highlight along it
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return level + 40 * np.cos((xs * 0.7 + ys * 0.3) / 9.0)


def cover(gray: np.ndarray, share: float, kind: str, seed: int, circle: Circle | None = None) -> tuple[np.ndarray, float]:
    """The crop with a `kind` cover hiding about `share` of the part's disk; returns (image, share hidden)."""
    if kind not in KINDS:
        raise ValueError(f"cover kind {kind!r}: choose one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    c = circle if circle is not None else drawing_rim(gray)
    disk = disk_mask(gray.shape, c.cx, c.cy, c.r)
    angle = rng.uniform(0, 2 * math.pi)
    width = _tool_width(share, seed) if kind == "tool" else 1.0
    # bisect the depth that hides `share` of the disk; a bar hides more the deeper it reaches
    # only until it is centred (depth 1 + width/2), so the search stops there
    lo, hi = 0.0, (1.0 + width / 2) if kind == "tool" else 2.0
    for _ in range(18):
        depth = (lo + hi) / 2
        m = _cover_shape(gray.shape, c, depth, angle, kind, np.random.default_rng(seed), width)
        hidden = float((m[disk] > 0.5).mean())
        lo, hi = (depth, hi) if hidden < share else (lo, depth)
    m = _cover_shape(gray.shape, c, hi, angle, kind, np.random.default_rng(seed), width)
    tex = _texture(gray.shape, kind, rng)
    out = gray.astype(np.float32) * (1 - m) + tex * m
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), float((m[disk] > 0.5).mean())
