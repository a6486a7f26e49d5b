"""edge.vision.partview: the part-only mask, dihedral views, logit averaging, InputSpec and the rim.

The model checks run the shipped bundle (models/casting-cnn) through the real LiteRT
interpreter, once as shipped and once as a part-only copy in tmp_path (only model.json's
`input.part_only` is added, so its sha256 still matches model.tflite).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.inference import bundle
from edge.inference.bundle import BundleError
from edge.inference.model import Classifier
from edge.offline.conditions import on_backdrop
from edge.vision.locate import RIM_FINDERS
from edge.vision.partview import (
    FILL,
    RIM_MARGIN,
    VIEW_AGGREGATES,
    VIEW_CHOICES,
    Circle,
    InputSpec,
    combine_views,
    dihedral_views,
    disk_mask,
    framing_circle,
    mask_outside,
    mean_logit,
    part_only_input,
    rim_circle,
)
from edge.vision.simulate import synthetic_part

SHIPPED = bundle.DEFAULT_BUNDLE.parent / "casting-cnn-crisp"  # a whole-crop bundle (no part_only, no guard)
# fill 150 rather than 128: the shipped model (not trained part-only) saturates at p = 0.996
# on drawn parts masked with 128, so p_defect could not show a change; with 150 the drawn
# good parts sit at p ~0.3-0.65 (measured: 0.312, 0.551, 0.5, 0.645 for seeds 0-3).
PART_ONLY = {"margin": 0.08, "fill": 150}


def drawn_part(seed: int, cx: float, cy: float, r: float, size: int = 300) -> np.ndarray:
    """A light backdrop, a dark outline just outside radius r around (cx, cy), bright shaded metal
    inside it, then the vane ring, hub and bore: a rim whose true circle is known."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 172.0 + rng.normal(0, 3, (size, size))
    d = np.hypot(xx - cx, yy - cy)

    def disc(rr: float, value: float | np.ndarray) -> None:
        m = np.clip(rr + 0.5 - d, 0, 1)
        img[:] = m * value + (1 - m) * img

    disc(r + 2, 55.0)
    disc(r, 190.0 + 20 * np.cos(np.arctan2(yy - cy, xx - cx) - rng.uniform(0, 2 * np.pi)))
    disc(0.74 * r, 95.0)
    disc(0.72 * r, 180.0)
    disc(0.60 * r, 32.0)
    disc(0.30 * r, 200.0)
    disc(0.20 * r, 120.0)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def outside_of(img: np.ndarray, c: Circle, margin: float) -> np.ndarray:
    """Pixels farther than r (1 + margin) from the centre, computed here in float64."""
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float64)
    return (xx - c.cx) ** 2 + (yy - c.cy) ** 2 > (c.r * (1 + margin)) ** 2


@pytest.fixture(scope="module")
def part_only_bundle(tmp_path_factory: pytest.TempPathFactory) -> bundle.Bundle:
    folder = tmp_path_factory.mktemp("part-only")
    for name in (bundle.MODEL_FILE, bundle.SIDECAR_FILE):
        shutil.copy(SHIPPED / name, folder / name)
    meta = json.loads((folder / bundle.SIDECAR_FILE).read_text())
    meta["input"]["part_only"] = dict(PART_ONLY)
    bundle.write_sidecar(folder, meta)  # re-sealed: a deliberate change
    return bundle.load(folder)


@pytest.fixture(scope="module")
def part_only_clf(part_only_bundle: bundle.Bundle) -> Classifier:
    return Classifier.from_bundle(part_only_bundle)


@pytest.fixture(scope="module")
def plain_clf() -> Classifier:
    return Classifier.from_bundle(bundle.load(SHIPPED))


# ---- mask_outside ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape,circle,margin,fill", [
    ((300, 300), Circle(149.5, 149.5, 121.5, True), RIM_MARGIN, FILL),
    ((240, 310), Circle(161.3, 117.8, 93.7, True), 0.0, 3),
    ((200, 200), Circle(80.2, 120.6, 70.37, False), 0.25, 250),
])
def test_mask_outside_fills_exactly_the_pixels_beyond_the_margin(shape, circle, margin, fill) -> None:
    rng = np.random.default_rng(7)
    img = rng.integers(10, 240, shape).astype(np.uint8)  # no pixel equals any fill used here
    img[img == fill] = fill + 1
    out = mask_outside(img, circle, margin, fill)
    beyond = outside_of(img, circle, margin)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    gap = np.abs((xx - circle.cx) ** 2 + (yy - circle.cy) ** 2 - (circle.r * (1 + margin)) ** 2)
    assert gap.min() > 0.01  # no pixel centre on the boundary: the rule, not float rounding, decides
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert beyond.any() and (~beyond).any()
    assert (out[beyond] == fill).all()
    assert np.array_equal(out[~beyond], img[~beyond])
    assert not np.shares_memory(out, img)


def test_mask_outside_keeps_a_band_of_margin_radii_beyond_the_rim() -> None:
    img = np.full((300, 300), 200, np.uint8)
    c = Circle(149.5, 149.5, 100.0, True)
    out = mask_outside(img, c, 0.1, 0)
    row = out[150]  # centre row: kept from x = 149.5 - 110 to 149.5 + 110
    kept = np.flatnonzero(row == 200)
    assert kept[0] == math.ceil(149.5 - 110) and kept[-1] == math.floor(149.5 + 110)


def test_part_only_input_is_the_crop_itself_without_part_only() -> None:
    img = synthetic_part(3)
    assert part_only_input(img, InputSpec()) is img
    spec = InputSpec(True, 0.08, 150)
    c = rim_circle(img)
    assert np.array_equal(part_only_input(img, spec), mask_outside(img, c, 0.08, 150))


# ---- part-only input and the real model --------------------------------------------------------

def test_part_only_bundle_reads_its_spec(part_only_clf: Classifier, plain_clf: Classifier) -> None:
    assert part_only_clf.spec == InputSpec(True, PART_ONLY["margin"], PART_ONLY["fill"], 1)
    assert plain_clf.spec == InputSpec()


def _surrounds(img: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    other = synthetic_part(seed + 50, defect=True)
    return [np.zeros_like(img), np.full_like(img, 255), np.full_like(img, 70),
            rng.integers(0, 256, img.shape, dtype=np.uint8), other]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixels_outside_the_kept_disk_cannot_move_the_input_or_p_defect(
        seed: int, part_only_clf: Classifier, plain_clf: Classifier) -> None:
    img = synthetic_part(seed)
    c = rim_circle(img)
    assert c.found
    spec = part_only_clf.spec
    beyond = outside_of(img, c, spec.margin)
    x0, p0 = part_only_input(img, spec, c), part_only_clf.p_defect(img, c)
    assert 0.05 < p0 < 0.95  # not saturated: a changed input would show in p
    plain_moved = []
    for alt in _surrounds(img, seed):
        changed = np.where(beyond, alt, img).astype(np.uint8)
        assert not np.array_equal(changed, img)
        assert np.array_equal(changed[~beyond], img[~beyond])
        assert np.array_equal(part_only_input(changed, spec, c), x0)
        assert part_only_clf.p_defect(changed, c) == p0
        plain_moved.append(abs(plain_clf.p_defect(changed) - plain_clf.p_defect(img)))
    # the same changes do move the shipped (whole-crop) model: the check above has power
    assert max(plain_moved) > 0.5


def test_part_only_input_is_unchanged_by_a_light_surround_when_the_rim_is_found_again(
        part_only_clf: Classifier) -> None:
    """The production path finds the rim on the crop itself; a lighter surround adds no edge
    falling outward, so the found rim (and p_defect) must not move."""
    img = synthetic_part(1)
    c = rim_circle(img)
    changed = np.where(outside_of(img, c, 0.08), np.uint8(255), img)
    c2 = rim_circle(changed)
    assert c2.found and abs(c2.r - c.r) < 0.5 and math.hypot(c2.cx - c.cx, c2.cy - c.cy) < 0.5
    assert abs(part_only_clf.p_defect(changed) - part_only_clf.p_defect(img)) < 0.02


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="known bug: a dark surround beyond the kept margin creates the "
                   "outermost falling edge at r(1+margin); rim_circle snaps to it (r +~9.8 px) and the "
                   "part-only p_defect of a drawn good part goes 0.31 -> 0.996")
def test_a_dark_surround_beyond_the_margin_does_not_move_the_found_rim(part_only_clf: Classifier) -> None:
    img = synthetic_part(0)
    c = rim_circle(img)
    changed = np.where(outside_of(img, c, 0.08), np.uint8(0), img)
    c2 = rim_circle(changed)
    assert abs(c2.r - c.r) < 2.0
    assert abs(part_only_clf.p_defect(changed) - part_only_clf.p_defect(img)) < 0.05


def test_part_only_bundle_with_a_bad_margin_is_refused(tmp_path: Path) -> None:
    for name in (bundle.MODEL_FILE, bundle.SIDECAR_FILE):
        shutil.copy(SHIPPED / name, tmp_path / name)
    meta = json.loads((tmp_path / bundle.SIDECAR_FILE).read_text())
    meta["input"]["part_only"] = {"margin": 0.9, "fill": 128}
    bundle.write_sidecar(tmp_path, meta)  # re-sealed: a deliberate change
    with pytest.raises(BundleError, match=r"input\.part_only\.margin"):
        Classifier.from_bundle(bundle.load(tmp_path))


# ---- dihedral views ------------------------------------------------------------------------------

def _all_dihedral(img: np.ndarray) -> list[np.ndarray]:
    out = []
    for flip in (False, True):
        v = img[:, ::-1] if flip else img
        for k in range(4):
            out.append(np.rot90(v, k))
    return out


@pytest.mark.parametrize("n", VIEW_CHOICES)
def test_dihedral_views_are_n_distinct_exact_permutations(n: int) -> None:
    img = np.random.default_rng(n).integers(0, 256, (64, 64), dtype=np.uint8)
    views = dihedral_views(img, n)
    assert len(views) == n
    assert np.array_equal(views[0], img)
    group = _all_dihedral(img)
    for v in views:
        assert v.shape == img.shape and v.dtype == img.dtype and v.flags["C_CONTIGUOUS"]
        assert np.array_equal(np.sort(v, axis=None), np.sort(img, axis=None))
        assert any(np.array_equal(v, g) for g in group)
    for i in range(n):
        for j in range(i + 1, n):
            assert not np.array_equal(views[i], views[j])
    if n >= 2:
        assert np.array_equal(views[1], img[::-1, ::-1])  # 2 views: identity and its half turn


def test_dihedral_views_of_a_masked_centred_crop_stay_masked() -> None:
    img = synthetic_part(4)
    c = framing_circle(img.shape)
    masked = mask_outside(img, c, 0.08, 7)
    beyond = outside_of(img, c, 0.08)
    for v in dihedral_views(masked, 8):
        assert (v[beyond] == 7).all()


@pytest.mark.parametrize("n", [0, 3, 5, 6, 7, 9, 16, -1])
def test_dihedral_views_rejects_other_counts(n: int) -> None:
    with pytest.raises(ValueError, match="views"):
        dihedral_views(np.zeros((8, 8), np.uint8), n)


# ---- mean_logit ------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.01, 0.1, 0.3, 0.5, 0.77, 0.99])
@pytest.mark.parametrize("n", [1, 2, 8])
def test_mean_logit_of_equal_probabilities_is_that_probability(p: float, n: int) -> None:
    assert mean_logit([p] * n) == pytest.approx(p, abs=1e-12)


def test_mean_logit_is_finite_at_0_and_1_and_averages_in_logit_space() -> None:
    lo, hi = mean_logit([0.0, 0.0]), mean_logit(np.array([1.0, 1.0, 1.0]))
    assert math.isfinite(lo) and math.isfinite(hi)
    assert 0.0 < lo < 0.01 and 0.99 < hi < 1.0
    assert mean_logit([0.0, 1.0]) == pytest.approx(0.5)
    ps = [0.2, 0.9, 0.6]
    z = np.mean([math.log(q / (1 - q)) for q in ps])
    assert mean_logit(ps) == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-12)
    assert mean_logit(ps) != pytest.approx(np.mean(ps), abs=1e-3)


def test_combine_views_by_mean_in_logit_space_or_by_the_highest() -> None:
    ps = [0.01, 0.02, 0.90, 0.03]  # one orientation sees the defect
    assert combine_views(ps) == mean_logit(ps) == combine_views(ps, "mean") < 0.1
    assert combine_views(ps, "max") == 0.90
    assert combine_views(np.array([0.3]), "max") == 0.3 and VIEW_AGGREGATES == ("mean", "max")
    with pytest.raises(ValueError, match="view aggregate 'min': choose one of mean, max"):
        combine_views(ps, "min")


def test_a_bundle_that_takes_the_highest_view_decides_by_it(part_only_bundle: bundle.Bundle) -> None:
    img = synthetic_part(3)
    base = InputSpec.from_meta(part_only_bundle.meta)
    by_mean = Classifier(part_only_bundle.model_path, spec=replace(base, views=4))
    by_max = Classifier(part_only_bundle.model_path, spec=replace(base, views=4, aggregate="max"))
    per_view = [by_mean.model_p(v) for v in dihedral_views(part_only_input(img, by_mean.spec), 4)]
    assert len(set(per_view)) > 1  # the views disagree, so the two ways differ
    assert by_max.p_defect(img) == max(per_view)
    assert by_mean.p_defect(img) == pytest.approx(mean_logit(per_view), abs=1e-12)
    assert by_mean.p_defect(img) < max(per_view)


# ---- InputSpec.from_meta -----------------------------------------------------------------------------

def _meta(part_only=None, views=None) -> dict:
    meta: dict = {"input": {"dtype": "uint8", "scale": 1.0, "zero_point": 0}}
    if part_only is not None:
        meta["input"]["part_only"] = part_only
    if views is not None:
        meta["views"] = views
    return meta


def test_input_spec_reads_a_good_sidecar() -> None:
    assert InputSpec.from_meta(_meta({"margin": 0.1, "fill": 100}, 4)) == InputSpec(True, 0.1, 100, 4)
    assert InputSpec.from_meta(_meta({"margin": 0, "fill": 255}, 8)) == InputSpec(True, 0.0, 255, 8)
    assert InputSpec.from_meta(_meta(views=2)) == InputSpec(False, RIM_MARGIN, FILL, 2)
    assert InputSpec.from_meta(_meta()) == InputSpec()
    assert InputSpec.from_meta(bundle.load(SHIPPED).meta) == InputSpec()
    spec = InputSpec.from_meta(_meta({"margin": 0.08, "fill": 128}))
    assert spec.finder == "half"  # bundles made before the finder was recorded keep theirs
    assert InputSpec.from_meta(_meta(spec.to_meta(), spec.views)) == spec
    highest = InputSpec.from_meta(dict(_meta({"margin": 0.08, "fill": 128}, 4), view_aggregate="max"))
    assert highest.aggregate == "max" and InputSpec.from_meta(_meta(views=4)).aggregate == "mean"
    combined = InputSpec.from_meta(_meta({"margin": 0.08, "fill": 128, "finder": "combined"}, 1))
    assert combined == InputSpec(True, 0.08, 128, 1, "combined")
    assert InputSpec.from_meta(_meta(combined.to_meta(), 1)) == combined


@pytest.mark.parametrize("part_only,views,field", [
    ({"margin": -0.01, "fill": 128}, None, "input.part_only.margin"),
    ({"margin": 0.51, "fill": 128}, None, "input.part_only.margin"),
    ({"margin": "0.1", "fill": 128}, None, "input.part_only.margin"),
    ({"margin": True, "fill": 128}, None, "input.part_only.margin"),
    ({"fill": 128}, None, "input.part_only.margin"),
    ({"margin": 0.08, "fill": 256}, None, "input.part_only.fill"),
    ({"margin": 0.08, "fill": -1}, None, "input.part_only.fill"),
    ({"margin": 0.08, "fill": 127.5}, None, "input.part_only.fill"),
    ({"margin": 0.08, "fill": False}, None, "input.part_only.fill"),
    ({"margin": 0.08}, None, "input.part_only.fill"),
    ("yes", None, "input.part_only"),
    ({"margin": 0.08, "fill": 128, "finder": "full"}, None, "input.part_only.finder"),
    ({"margin": 0.08, "fill": 128, "finder": None}, None, "input.part_only.finder"),
    ({"margin": 0.08, "fill": 128}, 3, "views"),
    (None, 0, "views"),
    (None, 16, "views"),
    (None, True, "views"),
    (None, "8", "views"),
    (None, 4.0, "views"),
])
def test_input_spec_rejects_a_bad_field_naming_it(part_only, views, field: str) -> None:
    with pytest.raises(ValueError) as exc:
        InputSpec.from_meta(_meta(part_only, views))
    assert str(exc.value).startswith(field + ":")


@pytest.mark.parametrize("aggregate", ["min", None, 1, "MAX"])
def test_input_spec_rejects_a_bad_view_aggregate_naming_it(aggregate) -> None:
    with pytest.raises(ValueError, match=r"^view_aggregate: "):
        InputSpec.from_meta(dict(_meta(views=4), view_aggregate=aggregate))


def test_input_spec_reads_what_the_output_represents_and_refuses_anything_else() -> None:
    logit = dict(_meta({"margin": 0.08, "fill": 128}, 4), output={"dtype": "uint8", "represents": "logit"})
    assert InputSpec.from_meta(logit).output == "logit"
    assert InputSpec.from_meta(dict(_meta(views=2), output={"represents": "logit"})).output == "logit"
    assert InputSpec.from_meta(_meta()).output == "p_defect"  # every bundle before 2026-12-07
    for bad in ("probability", None, ["logit"]):
        with pytest.raises(ValueError, match=r"^output.represents: " + re.escape(repr(bad))):
            InputSpec.from_meta(dict(_meta(views=2), output={"represents": bad}))


def test_an_unknown_rim_finder_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"rim finder 'full': choose one of half, combined"):
        rim_circle(np.full((300, 300), 128, np.uint8), "full")


# ---- rim_circle ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cx,cy,r", [(149.5, 149.5, 121.5), (155.3, 146.2, 118.0), (143.0, 152.7, 128.0),
                                     (150.0, 150.0, 110.0), (146.0, 156.0, 133.0)])
@pytest.mark.parametrize("finder", RIM_FINDERS)
def test_rim_circle_finds_a_drawn_rim(cx: float, cy: float, r: float, finder: str) -> None:
    # measured: centre within 0.25 px, radius 1.55 px short (the edge is found on the half-size copy)
    c = rim_circle(drawn_part(int(cx * 10), cx, cy, r), finder)
    assert c.found and c.score > 0.8
    assert math.hypot(c.cx - cx, c.cy - cy) < 2.0
    assert abs(c.r - r) < 3.0


@pytest.mark.parametrize("shape", [(300, 300), (240, 320)])
def test_rim_circle_falls_back_to_the_framing_on_a_blank_crop(shape: tuple[int, int]) -> None:
    for value, finder in zip((0, 128, 255) * 2, RIM_FINDERS * 3, strict=True):
        c = rim_circle(np.full(shape, value, np.uint8), finder)
        assert not c.found
        assert c == framing_circle(shape)
    f = framing_circle(shape)
    assert (f.cx, f.cy) == ((shape[1] - 1) / 2, (shape[0] - 1) / 2)
    assert f.r == pytest.approx(0.81 * min(shape) / 2)


def test_disk_mask_agrees_with_the_distance() -> None:
    c = Circle(40.3, 33.9, 21.2, True)
    m = disk_mask((80, 90), c.cx, c.cy, c.r)
    assert np.array_equal(m, ~outside_of(np.zeros((80, 90)), c, 0.0))


def test_the_combined_finder_misses_the_rim_less_often_on_light_belts(casting_data: Path) -> None:
    # Measured on the first 60 good test parts pasted on grey 220 and 230 belts: the half-size
    # search is off by >5 px (radius or centre) on 10 + 13, the combined one on 8 + 8; on a
    # dark belt (100) neither is. Deterministic: no random draw.
    files = sorted((casting_data / "test" / "ok_front").glob("*.jpeg"))[:60]
    misses = {(finder, grey): 0 for finder in RIM_FINDERS for grey in (100, 220, 230)}
    for f in files:
        gray = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        ref = rim_circle(gray)
        for grey in (100, 220, 230):
            on_belt = on_backdrop(gray, grey, circle=ref)
            for finder in RIM_FINDERS:
                c = rim_circle(on_belt, finder)
                misses[finder, grey] += abs(c.r - ref.r) > 5 or math.hypot(c.cx - ref.cx, c.cy - ref.cy) > 5
    light = {finder: misses[finder, 220] + misses[finder, 230] for finder in RIM_FINDERS}
    assert light["half"] >= 15  # the weakness is there to fix
    assert light["combined"] <= light["half"] - 5
    assert misses["combined", 100] <= 1
