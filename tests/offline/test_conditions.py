"""edge.offline.conditions: named, seeded line conditions applied to dataset-framed crops."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.offline import conditions
from edge.offline.conditions import (
    BACKDROPS,
    BY_NAME,
    LINE_CONDITIONS,
    jpeg,
    lighting,
    motion,
    on_backdrop,
    reframe,
)
from edge.offline.occlude import cover
from edge.vision.partview import DRAWING_FINDER, Circle, disk_mask, drawing_rim, rim_circle
from edge.vision.simulate import synthetic_part
from tests.vision.test_partview import drawn_part

SEEDED = {"belt_woven_125", "motion_5px", "offset_0.04", "grain_120", "woven_125"}  # use the per-image seed


@pytest.fixture(scope="module")
def part() -> np.ndarray:
    return synthetic_part(5, defect=True)


def far_backdrop(img: np.ndarray, c: Circle) -> np.ndarray:
    return ~disk_mask(img.shape, c.cx, c.cy, c.r * 1.35)


def test_condition_names_are_unique_and_all_registered() -> None:
    names = [c.name for c in (*LINE_CONDITIONS, *BACKDROPS)]
    assert len(names) == len(set(names)) == len(BY_NAME)
    assert {c.kind for c in LINE_CONDITIONS} == {"backdrop", "lighting", "focus", "motion", "jpeg", "framing"}


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_each_condition_is_deterministic_uint8_and_keeps_the_shape(name: str, part: np.ndarray) -> None:
    cond = BY_NAME[name]
    before = part.copy()
    a, b = cond.fn(part, 3), cond.fn(part, 3)
    assert np.array_equal(part, before)  # the input is not modified
    assert a.dtype == np.uint8 and a.shape == part.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, part)  # every condition does something
    other = cond.fn(part, 4)
    if name in SEEDED:
        assert not np.array_equal(a, other)
    else:
        assert np.array_equal(a, other)


def test_apply_gives_image_i_the_seed_plus_i(part: np.ndarray) -> None:
    images = np.stack([part, synthetic_part(6), synthetic_part(7)])
    for name in ("motion_5px", "woven_125", "gain_1.25"):
        cond = BY_NAME[name]
        out = conditions.apply(images, cond, seed=10)
        assert out.shape == images.shape and out.dtype == np.uint8
        for i, img in enumerate(images):
            assert np.array_equal(out[i], cond.fn(img, 10 + i))
    empty = np.empty((0, 300, 300), np.uint8)
    got = conditions.apply(empty, BY_NAME["jpeg_q50"])
    assert got.shape == empty.shape and got is not empty


# ---- backdrops ------------------------------------------------------------------------------------

@pytest.mark.parametrize("grey,texture", [(60, "plain"), (70, "plain"), (140, "plain"), (220, "plain"),
                                          (125, "woven"), (120, "grain")])
@pytest.mark.parametrize("given", [True, False])
def test_on_backdrop_keeps_the_part_and_moves_a_plain_backdrop_towards_the_grey(
        grey: int, texture: str, given: bool) -> None:
    img = drawn_part(11, 151.0, 148.0, 120.0)  # backdrop 172 +- 5 (plain)
    c = rim_circle(img)
    assert c.found
    out = on_backdrop(img, grey, texture, seed=2, circle=c if given else None)
    inside = disk_mask(img.shape, c.cx, c.cy, c.r)
    assert np.array_equal(out[inside], img[inside])
    far = far_backdrop(img, c)
    old, new = float(img[far].mean()), float(out[far].mean())
    # measured: 172 -> 75 (grey 60), 84 (70), 144 (140), 214 (220), 132 (woven 125), 127 (grain 120)
    assert abs(new - grey) < 0.3 * abs(old - grey)


def test_a_textured_belt_is_textured_and_a_plain_one_is_not() -> None:
    img = drawn_part(12, 149.5, 149.5, 121.5)
    c = rim_circle(img)
    far = far_backdrop(img, c)
    # at the backdrop's own grey, so that only texture (not the blend with the old grey) counts;
    # measured std: plain 5.0 (the drawn noise, kept), woven 9.3, grain 9.1
    plain = on_backdrop(img, 172, "plain", 0, c)[far].std()
    woven = on_backdrop(img, 172, "woven", 0, c)[far].std()
    grain = on_backdrop(img, 172, "grain", 0, c)[far].std()
    assert plain == pytest.approx(img[far].std(), rel=0.1)
    assert woven > 1.5 * plain and grain > 1.5 * plain


def test_on_backdrop_keeps_a_real_part_inside_its_rim(casting_data: Path) -> None:
    files = sorted((casting_data / "test" / "ok_front").glob("*.jpeg"))[:3]
    files += sorted((casting_data / "test" / "def_front").glob("*.jpeg"))[:3]
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        c = drawing_rim(img)
        inside = disk_mask(img.shape, c.cx, c.cy, c.r)
        far = far_backdrop(img, c)
        for grey in (60, 230):
            out = on_backdrop(img, grey)
            assert np.array_equal(out[inside], img[inside])
            assert abs(float(out[far].mean()) - grey) < abs(float(img[far].mean()) - grey)


# Train images on which the "half" finder takes an inner ring for the rim (10-15 px inside it).
INNER_RING = ("def_front/cast_def_0_1016.jpeg", "def_front/cast_def_0_3668.jpeg", "ok_front/cast_ok_0_7093.jpeg")


@pytest.mark.parametrize("name", INNER_RING)
def test_a_belt_never_replaces_the_castings_own_flange(casting_data: Path, name: str) -> None:
    """Where "half" sees an inner ring, a belt drawn outside that ring took the flange's metal, as
    grey as the plate, for backdrop: the conditions draw at the rim the trained finders agree on."""
    img = cv2.imread(str(casting_data / "train" / name), cv2.IMREAD_GRAYSCALE)
    inner, rim = rim_circle(img, "half"), rim_circle(img, DRAWING_FINDER)
    assert rim.r - inner.r > 8, "the image no longer shows the inner-ring case this test is about"
    part = disk_mask(img.shape, rim.cx, rim.cy, rim.r)
    for cond in ("belt_dark_70", "belt_light_220", "belt_woven_125", "grey_60", "grey_230"):
        out = BY_NAME[cond].fn(img, 0)
        assert np.array_equal(out[part], img[part]), cond
    # the cover's share is of the part's disk, not of the inner ring's
    covered, share = cover(img, 0.4, "hand", 0)
    hidden = (covered != img) & part
    assert hidden.sum() / part.sum() == pytest.approx(share, abs=0.05)


def test_the_dark_belt_condition_makes_a_real_backdrop_dark(casting_data: Path) -> None:
    files = sorted((casting_data / "test" / "ok_front").glob("*.jpeg"))[::50]
    means = []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        c = rim_circle(img)
        means.append(float(BY_NAME["belt_dark_70"].fn(img, 0)[far_backdrop(img, c)].mean()))
    # the plate's shading and the part's soft shadow are backdrop too (before 2026-12-03: ~117)
    assert np.median(means) < 80 and max(means) < 95


def test_a_new_belt_keeps_flash_beyond_the_rim(casting_data: Path) -> None:
    """A burr of bright metal or a dark chip just outside the rim is the part, not the belt."""
    img = cv2.imread(str(min((casting_data / "test" / "ok_front").glob("*.jpeg"))), cv2.IMREAD_GRAYSCALE)
    c = rim_circle(img)
    flashed = img.copy()
    bx, by = round(c.cx + c.r * 1.04), round(c.cy)
    cv2.circle(flashed, (bx, by), 4, 250, -1)
    dx, dy = round(c.cx - c.r * 1.04), round(c.cy)
    cv2.circle(flashed, (dx, dy), 4, 20, -1)
    for grey in (60, 230):
        out = on_backdrop(flashed, grey, circle=c)
        assert out[by, bx] > 200 and out[dy, dx] < 60, grey
        plate = far_backdrop(img, c)
        assert abs(float(out[plate].mean()) - grey) < 15, grey


# ---- lighting, focus, motion, JPEG ---------------------------------------------------------------------

def test_lighting_identity_and_direction(part: np.ndarray) -> None:
    assert np.array_equal(lighting(part), part)
    f = part.astype(float)
    assert lighting(part, gain=0.75).mean() < f.mean() < lighting(part, gain=1.25).mean()
    assert lighting(part, gamma=0.75).mean() > f.mean() > lighting(part, gamma=1.35).mean()
    assert np.abs(lighting(part, gain=0.5).astype(float) - np.rint(f * 0.5)).max() <= 1


def test_motion_streaks_along_its_angle_only() -> None:
    img = np.zeros((64, 64), np.uint8)
    img[32, :] = 255  # a horizontal line
    img[:, 20] = 255  # a vertical line
    along = motion(img, 5.0, 0.0)  # a horizontal streak
    assert (along[32, 30:60] == 255).all()  # the horizontal line is untouched away from the crossing
    assert along[10, 20] < 100 and along[10, 22] > 20  # the vertical line is smeared sideways
    across = motion(img, 5.0, 90.0)
    assert (across[5:28, 20] == 255).all() and across[32, 45] < 100 and across[34, 45] > 20
    flat = np.full((40, 40), 93, np.uint8)
    assert np.array_equal(motion(flat, 5.0, 37.0), flat)


def test_jpeg_recompression_is_lossy_but_close(part: np.ndarray) -> None:
    out = jpeg(part, 50)
    assert out.dtype == np.uint8 and out.shape == part.shape
    d = np.abs(out.astype(float) - part)
    assert d.max() > 0 and d.mean() < 5
    assert np.abs(jpeg(part, 95).astype(float) - part).mean() < d.mean()


# ---- reframing ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(300, 300), (200, 260)])
def test_reframe_with_scale_1_and_no_offset_is_identity(shape: tuple[int, int]) -> None:
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(reframe(img), img)
    assert np.array_equal(reframe(img, 1.0, 0.0, 0.0), img)


@pytest.mark.parametrize("scale", [0.92, 1.08])
def test_reframe_scales_the_rim_about_the_centre(scale: float, part: np.ndarray) -> None:
    c = rim_circle(part)
    c2 = rim_circle(reframe(part, scale))
    assert c.found and c2.found
    assert c2.r / c.r == pytest.approx(scale, rel=0.01)  # measured 0.918 and 1.081
    assert math.hypot(c2.cx - c.cx, c2.cy - c.cy) < 1.0


def test_reframe_offsets_by_a_share_of_the_side(part: np.ndarray) -> None:
    c = rim_circle(part)
    c2 = rim_circle(reframe(part, 1.0, 0.04, -0.03))
    assert c2.cx - c.cx == pytest.approx(0.04 * 300, abs=1.0)  # measured +12.0, -9.0 px
    assert c2.cy - c.cy == pytest.approx(-0.03 * 300, abs=1.0)
    assert c2.r == pytest.approx(c.r, abs=1.0)


def test_the_offset_condition_moves_the_part_by_4_percent(part: np.ndarray) -> None:
    c = rim_circle(part)
    for seed in range(4):
        c2 = rim_circle(BY_NAME["offset_0.04"].fn(part, seed))
        assert math.hypot(c2.cx - c.cx, c2.cy - c.cy) == pytest.approx(0.04 * 300, abs=1.5)
