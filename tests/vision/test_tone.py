"""The part's tones matched to a bundle's reference (edge.vision.tone): lighting must not move
the model input, the belt must not move the map, and a bad reference is refused by name."""

import re
from pathlib import Path

import numpy as np
import pytest

from edge.offline.conditions import BY_NAME, apply, lighting
from edge.offline.dataset import list_labelled, load_samples
from edge.vision.partview import Circle, InputSpec, part_only_input, part_region, part_tone, rim_circle
from edge.vision.tone import MIN_PIXELS, TONE_POINTS, quantiles, tone_from_meta, tone_map
from tests.conftest import part_image


def _parts(casting_data: Path, n: int = 12) -> tuple[np.ndarray, list[Circle]]:
    samples = list_labelled(casting_data / "train")
    ok = [s for s in samples if s.label == 0][:n]
    images = load_samples(ok + [s for s in samples if s.label == 1][:n]).images
    return images, [rim_circle(img, "combined") for img in images]


def test_a_gain_without_clipping_gives_the_same_pixels() -> None:
    img = (part_image(3) // 2).astype(np.uint8)  # every level <= 127: a gain of 2 clips nothing
    region = np.ones(img.shape, bool)
    ref = np.linspace(0, 255, TONE_POINTS)
    assert np.array_equal(tone_map(img, region, ref), tone_map(img * np.uint8(2), region, ref))
    assert not np.array_equal(img, img * np.uint8(2))


def test_lighting_changes_leave_the_real_parts_input_within_a_grey_level(casting_data: Path) -> None:
    images, circles = _parts(casting_data)
    spec = InputSpec(True, 0.08, 128, 1, "combined", tone=part_tone(images, circles))
    plain = InputSpec(True, 0.08, 128, 1, "combined")
    for name in ("gain_0.75", "gamma_0.75", "gamma_1.35"):
        lit = apply(images, BY_NAME[name])
        matched, raw = [], []
        for a, b, c in zip(images, lit, circles, strict=True):
            inside = part_region(a, c)
            for s, moved in ((spec, matched), (plain, raw)):
                moved.append(np.abs(part_only_input(a, s, c)[inside].astype(int) - part_only_input(b, s, c)[inside]))
        assert np.mean(np.concatenate(matched)) < 1.0, name
        assert np.mean(np.concatenate(raw)) > 10.0, name  # without the map the same change moves it


def test_the_belt_beyond_the_rim_does_not_move_the_map() -> None:
    img = part_image(5)
    c = Circle(149.5, 149.5, 0.42 * 300, found=True)
    inside = part_region(img, c)
    ref = np.linspace(20, 230, TONE_POINTS)
    other_belt = np.where(inside, img, np.uint8(30))
    assert np.array_equal(tone_map(img, inside, ref)[inside], tone_map(other_belt, inside, ref)[inside])


def test_the_map_keeps_the_order_of_grey_levels_and_ends_on_the_reference() -> None:
    img = part_image(7, defect=True)
    region = np.ones(img.shape, bool)
    ref = quantiles(part_image(8), region)
    out = tone_map(img, region, ref)
    levels = np.unique(img)
    mapped = np.array([out[img == v][0] for v in levels])
    assert np.all(np.diff(mapped.astype(int)) >= 0)  # monotonic: a dark pit stays darker than its ring
    assert ref[0] - 1 <= out.min() and out.max() <= ref[-1] + 1
    # onto its own quantiles a part maps almost to itself
    assert np.mean(np.abs(tone_map(img, region, quantiles(img, region)).astype(int) - img)) < 1.0


def test_too_few_pixels_to_rank_leave_the_crop_unchanged() -> None:
    img = part_image(1)
    region = np.zeros(img.shape, bool)
    region[:1, : MIN_PIXELS - 1] = True
    assert tone_map(img, region, np.linspace(0, 255, TONE_POINTS)) is img


def test_the_bundle_records_its_tones_and_reads_them_back() -> None:
    ref = tuple(float(v) for v in np.linspace(3, 250, TONE_POINTS))
    spec = InputSpec(True, 0.08, 128, 4, "combined", tone=ref)
    meta = {"input": {"part_only": spec.to_meta()}, "views": 4}
    assert InputSpec.from_meta(meta) == spec
    assert "tone" not in InputSpec(True).to_meta()  # bundles without a map write what they wrote before


@pytest.mark.parametrize(("tone", "words"), [
    ([1.0] * 10, "expected a list of 257 grey levels, got 10"),
    ("dark", "expected a list of 257 grey levels, got str"),
    ([0.0] * 256 + ["x"], "'x' is not a number"),
    ([0.0] * 256 + [300.0], "grey levels must lie in 0..255 (got 0.0..300.0)"),
    (list(np.linspace(0, 255, TONE_POINTS)[::-1]), "must not decrease"),
])
def test_a_bad_reference_is_refused_by_name(tone: object, words: str) -> None:
    with pytest.raises(ValueError, match=r"input\.part_only\.tone: " + re.escape(words)):
        tone_from_meta(tone)
    with pytest.raises(ValueError, match=r"input\.part_only\.tone"):
        InputSpec.from_meta({"input": {"part_only": {"margin": 0.08, "fill": 128, "tone": tone}}})


def test_lighting_helper_is_the_conditions_one() -> None:
    # the reference test above relies on BY_NAME's gain and gamma being edge.offline.conditions.lighting
    img = part_image(2)
    assert np.array_equal(apply(img[None], BY_NAME["gamma_1.35"])[0], lighting(img, gamma=1.35))
