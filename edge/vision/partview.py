"""What of a crop the model may see: the casting inside its rim, and nothing around it.

A model trained on one capture setup learns the backdrop with the part (the dataset's
light plate): on a darker belt it rejected good parts, on a plain plate it accepted a
defect. So a bundle can declare `input.part_only`: every model input, in training,
evaluation, replay and on the line, first goes through `part_only_input`, which finds the
rim around the crop's centre and replaces every pixel farther than `margin` beyond it by
one constant grey. Whatever lies outside that circle cannot move p_defect.

The margin keeps the rim's outline and what protrudes from it (flash, burrs: defects)
in view; training randomises the backdrop inside that band (trainer.augment).

Also here: the dihedral test-time views (8 rotations/flips of a crop), which are exact
pixel permutations, so a masked crop stays masked. Pure numpy/OpenCV.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge.vision.locate import RIM_DIAMETER_FRACTION, RIM_FINDERS, find_rim_in_crop, rim_searches
from edge.vision.tone import reference_tone, tone_from_meta, tone_map

RIM_MARGIN = 0.08  # of the rim radius kept beyond the rim: outline, flash and burrs stay in view
FILL = 128  # the grey that replaces everything beyond the margin
VIEW_CHOICES = (1, 2, 4, 8)
# What the int8 model's output holds (model.json `output.represents`): the probability itself, or
# its logit, which int8 resolves finely where a threshold near p 0.01 lies (k/256 does not).
OUTPUTS = ("p_defect", "logit")


@dataclass(frozen=True)
class Circle:
    """A rim circle in crop pixels (pixel centres at integers); found False = the fallback."""

    cx: float
    cy: float
    r: float
    found: bool
    score: float = 0.0


def framing_circle(size: tuple[int, int]) -> Circle:
    """Where the edge's crop puts the rim (locate.crop_part), and the fallback when no rim is found."""
    h, w = size
    return Circle((w - 1) / 2, (h - 1) / 2, RIM_DIAMETER_FRACTION * min(h, w) / 2, found=False)


def rim_circle(gray: np.ndarray, finder: str = "half") -> Circle:
    """The rim of the part a crop is framed on, or the framing circle (found=False)."""
    box = find_rim_in_crop(gray, finder)
    if box is None:
        return framing_circle(gray.shape[:2])
    return Circle(box.cx, box.cy, box.radius, found=True, score=box.score)


# Where the part is when offline tools draw on a dataset image (another belt, a cover): the
# "combined" finder. On the dataset's plate "half" takes an inner ring for the rim on ~1% of images,
# 10-35 px inside it, and a belt drawn outside that ring replaced a crescent of the casting's own
# flange (docs/training.md, "The belt conditions drew on an inner ring").
DRAWING_FINDER = "combined"


def drawing_rim(gray: np.ndarray) -> Circle:
    """The part's rim as offline drawing (edge.offline.conditions, edge.offline.occlude) sees it."""
    return rim_circle(gray, DRAWING_FINDER)


def other_rims(gray: np.ndarray, first: Circle) -> list[Circle]:
    """The other circles the crop's rim searches find (locate.rim_searches), each once, none
    within 2% of the radius and 2 px of `first` or of one before it."""
    out: list[Circle] = []
    for box in rim_searches(gray):
        c = Circle(box.cx, box.cy, box.radius, found=True, score=box.score)
        if not any(abs(c.r - o.r) <= 0.02 * o.r and math.hypot(c.cx - o.cx, c.cy - o.cy) <= 2.0
                   for o in [first, *out] if o.found):
            out.append(c)
    return out


@dataclass(frozen=True)
class InputSpec:
    """How a bundle's model input is made from a crop (model.json: `input.part_only`, `views`)."""

    part_only: bool = False
    margin: float = RIM_MARGIN
    fill: int = FILL
    views: int = 1
    finder: str = "half"  # locate.RIM_FINDERS: how the rim is searched, as in training
    aggregate: str = "mean"  # VIEW_AGGREGATES: how the views' p_defect become one (model.json `view_aggregate`)
    output: str = "p_defect"  # OUTPUTS: what the model's output is (model.json `output.represents`)
    tone: tuple[float, ...] | None = None  # edge.vision.tone reference (model.json `input.part_only.tone`)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> InputSpec:
        """Read and check the sidecar's fields; ValueError names the bad one."""
        po = (meta.get("input") or {}).get("part_only")
        views = meta.get("views", 1)
        if isinstance(views, bool) or not isinstance(views, int) or views not in VIEW_CHOICES:
            raise ValueError(f"views: {views!r} is not one of {', '.join(map(str, VIEW_CHOICES))}")
        aggregate = meta.get("view_aggregate", "mean")
        if aggregate not in VIEW_AGGREGATES:
            raise ValueError(f"view_aggregate: {aggregate!r} is not one of {', '.join(VIEW_AGGREGATES)}")
        output = output_of(meta)
        if po is None:
            return cls(views=views, aggregate=aggregate, output=output)
        if not isinstance(po, dict):
            raise ValueError(f"input.part_only: expected an object with margin and fill, got {po!r}")
        margin, fill = po.get("margin"), po.get("fill")
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not (0 <= margin <= 0.5):
            raise ValueError(f"input.part_only.margin: {margin!r} is not a number in 0..0.5")
        if isinstance(fill, bool) or not isinstance(fill, int) or not (0 <= fill <= 255):
            raise ValueError(f"input.part_only.fill: {fill!r} is not an integer grey level 0..255")
        finder = po.get("finder", "half")
        if finder not in RIM_FINDERS:
            raise ValueError(f"input.part_only.finder: {finder!r} is not one of {', '.join(RIM_FINDERS)}")
        tone = po.get("tone")
        ref = None if tone is None else tuple(float(v) for v in tone_from_meta(tone))
        return cls(True, float(margin), int(fill), views, finder, aggregate, output, ref)

    def to_meta(self) -> dict[str, Any]:
        if not self.part_only:
            return {}
        return {"margin": self.margin, "fill": self.fill, "finder": self.finder,
                **({"tone": list(self.tone)} if self.tone is not None else {})}

    def rim(self, gray: np.ndarray) -> Circle:
        """A crop's rim found as this bundle's model was trained to see it."""
        return rim_circle(gray, self.finder)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_of(meta: dict[str, Any]) -> str:
    """model.json's `output.represents` (absent: p_defect, as every bundle before 2026-12-07 had);
    ValueError naming a value that is neither."""
    out = meta.get("output")
    represents = out.get("represents", "p_defect") if isinstance(out, dict) else "p_defect"
    if represents not in OUTPUTS:
        raise ValueError(f"output.represents: {represents!r} is not one of {', '.join(OUTPUTS)}")
    return str(represents)


def _squared_distances(size: tuple[int, int], cx: float, cy: float) -> np.ndarray:
    h, w = size
    ys = (np.arange(h, dtype=np.float32) - np.float32(cy)) ** 2
    xs = (np.arange(w, dtype=np.float32) - np.float32(cx)) ** 2
    return ys[:, None] + xs[None, :]


def disk_mask(size: tuple[int, int], cx: float, cy: float, radius: float) -> np.ndarray:
    """Boolean (H, W): pixel centres within `radius` of (cx, cy)."""
    return _squared_distances(size, cx, cy) <= np.float32(radius) ** 2


def mask_outside(gray: np.ndarray, circle: Circle, margin: float = RIM_MARGIN, fill: int = FILL) -> np.ndarray:
    """uint8 copy of `gray` with every pixel beyond radius r x (1 + margin) set to `fill`."""
    keep = disk_mask(gray.shape[:2], circle.cx, circle.cy, circle.r * (1 + margin))
    return np.where(keep, gray, np.uint8(fill)).astype(np.uint8)


def part_only_input(gray: np.ndarray, spec: InputSpec, circle: Circle | None = None) -> np.ndarray:
    """The model input for a crop under `spec` (unchanged where the bundle is not part-only):
    tones matched inside the rim where the bundle declares a reference, then masked beyond it."""
    if not spec.part_only:
        return gray
    c = circle if circle is not None else spec.rim(gray)
    if spec.tone is None:
        return mask_outside(gray, c, spec.margin, spec.fill)
    d2 = _squared_distances(gray.shape[:2], c.cx, c.cy)  # once for the map's region and the mask
    toned = tone_map(gray, d2 <= np.float32(c.r) ** 2, np.asarray(spec.tone))
    keep = d2 <= np.float32(c.r * (1 + spec.margin)) ** 2
    return np.where(keep, toned, np.uint8(spec.fill)).astype(np.uint8)


def part_region(gray: np.ndarray, circle: Circle) -> np.ndarray:
    """The pixels that set a crop's tone map: inside its rim, not the margin beyond it."""
    return disk_mask(gray.shape[:2], circle.cx, circle.cy, circle.r)


def part_tone(images: np.ndarray, circles: list[Circle]) -> tuple[float, ...]:
    """The reference tones of parts at their found rims (edge.vision.tone.reference_tone)."""
    found = ((img, part_region(img, c)) for img, c in zip(images, circles, strict=True) if c.found)
    return tuple(float(v) for v in reference_tone(found))  # one region in memory at a time


def dihedral_views(img: np.ndarray, n: int) -> list[np.ndarray]:
    """The first n of: identity, rot90, rot180, rot270, and the same after a left-right flip.

    Exact pixel permutations (no resampling); n = 2 is the identity and its 180-degree turn.
    """
    if n not in VIEW_CHOICES:
        raise ValueError(f"views: {n} is not one of {VIEW_CHOICES}")
    order = [(0, False), (2, False), (1, False), (3, False), (0, True), (2, True), (1, True), (3, True)]
    out = []
    for k, flip in order[:n]:
        v = np.fliplr(img) if flip else img
        out.append(np.ascontiguousarray(np.rot90(v, k)))
    return out


_P_FLOOR = 1.0 / 512  # half a quantization step of a uint8 probability: logit stays finite


def sigmoid(z: float) -> float:
    """p from a logit, without overflow at either end."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logits(ps: np.ndarray | list[float], floor: float = _P_FLOOR) -> np.ndarray:
    """log(p / (1 - p)), p first clipped to [floor, 1 - floor] so it stays finite."""
    p = np.clip(np.asarray(ps, np.float64), floor, 1 - floor)
    return np.log(p) - np.log1p(-p)


def mean_logit(ps: np.ndarray | list[float]) -> float:
    """Average of probabilities in logit space (views of one part), back as a probability."""
    z = float(np.mean(logits(ps)))
    return 1.0 / (1.0 + math.exp(-z))


# How a bundle's views become one p_defect: "mean" in logit space, or "max", the highest (a part is
# rejected when any view says defect: a catch one orientation makes is not averaged away).
VIEW_AGGREGATES = ("mean", "max")


def combine_views(ps: np.ndarray | list[float], how: str = "mean") -> float:
    """One p_defect from the views' (VIEW_AGGREGATES)."""
    if how == "max":
        return float(np.max(ps))
    if how != "mean":
        raise ValueError(f"view aggregate {how!r}: choose one of {', '.join(VIEW_AGGREGATES)}")
    return mean_logit(ps)


def combine_logits(zs: np.ndarray | list[float], how: str = "mean") -> float:
    """One p_defect from the views' logits (a logit-output model): their mean or their highest.
    No floor here: a logit output carries its confidence to well below p 1/512."""
    if how not in VIEW_AGGREGATES:
        raise ValueError(f"view aggregate {how!r}: choose one of {', '.join(VIEW_AGGREGATES)}")
    z = np.asarray(zs, np.float64)
    return sigmoid(float(np.max(z) if how == "max" else np.mean(z)))


def backdrop_grey(gray: np.ndarray, circle: Circle) -> float:
    """Median grey of the backdrop ring 1.12-1.35 rim radii out (the whole image's if none is in view)."""
    ring = disk_mask(gray.shape[:2], circle.cx, circle.cy, circle.r * 1.35)
    ring &= ~disk_mask(gray.shape[:2], circle.cx, circle.cy, circle.r * 1.12)
    return float(np.median(gray[ring])) if ring.any() else float(np.median(gray))


def circles_and_backdrops(images: np.ndarray, finder: str = "half") -> tuple[list[Circle], np.ndarray]:
    """Each image's rim (or the framing fallback) and a (N, 4) float32 array [cx, cy, r, backdrop grey]."""
    circles = [rim_circle(img, finder) for img in images]
    table = np.array([[c.cx, c.cy, c.r, backdrop_grey(img, c)] for img, c in zip(images, circles, strict=True)],
                     np.float32).reshape(-1, 4)
    return circles, table
