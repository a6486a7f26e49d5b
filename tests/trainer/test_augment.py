from dataclasses import replace

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tests.conftest import part_image  # noqa: E402
from trainer.augment import NOTEBOOK, AugmentConfig, augment  # noqa: E402

IDENTITY = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, hflip=False, vflip=False, brightness=(1.0, 1.0))


def batch(n: int = 4) -> np.ndarray:
    return np.stack([part_image(i, size=64) for i in range(n)])[..., None]


def test_identity_config_leaves_pixels_unchanged() -> None:
    x = batch()
    out = augment(x, IDENTITY, np.array([1, 2])).numpy()
    assert np.allclose(out, x, atol=1e-3)


def test_flips_only_give_original_or_mirror() -> None:
    x = batch(8)
    cfg = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, hflip=True, vflip=False, brightness=(1.0, 1.0))
    out = augment(x, cfg, np.array([3, 4])).numpy()
    mirrored = [np.allclose(o, xi[:, ::-1], atol=1e-3) for o, xi in zip(out, x)]
    same = [np.allclose(o, xi, atol=1e-3) for o, xi in zip(out, x)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_brightness_scales_within_range_and_clips() -> None:
    x = batch()
    cfg = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, hflip=False, vflip=False, brightness=(0.75, 1.25))
    out = augment(x, cfg, np.array([5, 6])).numpy()
    ratio = out.sum(axis=(1, 2, 3)) / x.sum(axis=(1, 2, 3))
    assert ((ratio > 0.74) & (ratio < 1.26)).all() and out.max() <= 255


def test_notebook_augmentation_is_seeded_and_varies_by_step() -> None:
    x = batch()
    a = augment(x, NOTEBOOK, np.array([123, 0])).numpy()
    b = augment(x, NOTEBOOK, np.array([123, 0])).numpy()
    c = augment(x, NOTEBOOK, np.array([123, 16])).numpy()
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_fused_warp_matches_tensorflows_kernel() -> None:
    """The XLA warp must give ImageProjectiveTransformV3's pixels for any affine the configs draw,
    including sources far outside the image (nearest fill) and both flips."""
    from trainer.augment import _transforms, _warp_reference, _warp_xla

    x = tf.constant(np.stack([part_image(i, size=96) for i in range(16)])[..., None])
    wild = AugmentConfig(rotation=360, shift=0.4, shear=20, zoom=0.5, hflip=True, vflip=True)
    for cfg, seed in ((NOTEBOOK, 1), (wild, 2)):
        t = _transforms(cfg, 16, 96, 96, tf.constant([seed, 0], tf.int64))
        ref = _warp_reference(x, t).numpy()
        out = _warp_xla(x, t).numpy()
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 0.05, (cfg, np.abs(out - ref).max())
        assert np.abs(ref - x.numpy()).mean() > 5  # the transforms really moved the pixels


def test_fallback_without_xla_gives_the_same_augmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.augment as aug

    x = batch(8)
    monkeypatch.setattr(aug, "_use_xla", True)
    fused = augment(x, NOTEBOOK, np.array([9, 0])).numpy()
    monkeypatch.setattr(aug, "_use_xla", False)
    reference = augment(x, NOTEBOOK, np.array([9, 0])).numpy()
    assert np.abs(fused - reference).max() < 0.05 and np.abs(fused - x).mean() > 5


def _laplacian_energy(images: np.ndarray) -> np.ndarray:
    x = images[..., 0].astype(np.float64)
    lap = x[:, 1:-1, 1:-1] * 4 - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return (lap**2).mean(axis=(1, 2))


def test_focus_axis_sharpens_and_blurs_each_image_on_the_same_geometry() -> None:
    # Same seed = same geometry; only the focus draw differs, so each image's crispness
    # must move the way its config says: the unsharp mask up, the blur down.
    x = batch(8)
    still = AugmentConfig(rotation=30, shift=0, shear=0, zoom=0, hflip=False, vflip=False, brightness=(1.0, 1.0))
    seed = np.array([7, 8])
    plain = _laplacian_energy(augment(x, still, seed).numpy())
    sharp = _laplacian_energy(augment(x, replace(still, sharpen=1.5), seed).numpy())
    soft = _laplacian_energy(augment(x, replace(still, blur=0.5), seed).numpy())
    assert (sharp > plain).all() and (soft < plain).all()
    assert sharp.max() > 1.5 * plain.max()  # amounts up to 1.5 reach well past the resampled softness


def test_augmentation_choice_auto_keeps_each_architectures_set_and_line_sharpen_is_opt_in() -> None:
    from pathlib import Path

    from trainer.augment import LINE, LINE_PART, LINE_SHARPEN
    from trainer.options import FitOptions

    def pick(**kw: str) -> tuple[str, AugmentConfig]:
        return FitOptions(Path("d"), Path("o"), **kw).augment_config()

    # issue 17: the default is the line-condition recipe of a part-only model
    assert pick() == ("line-part", LINE_PART) and LINE_PART.part_only and LINE_PART.interpolation == "bicubic"
    assert pick(augment="line") == ("line", LINE) and LINE.sharpen == 0
    assert pick(arch="seed") == ("notebook", NOTEBOOK)
    assert pick(augment="line-sharpen") == ("line-sharpen", LINE_SHARPEN) and LINE_SHARPEN.sharpen == 1.5


def test_bicubic_warp_matches_opencv_and_keeps_more_detail_than_bilinear() -> None:
    """Keys' kernel with OpenCV's a = -0.75 must give cv2.warpAffine's INTER_CUBIC pixels
    (OpenCV rounds source positions to 1/32 px, so a few edge pixels differ by a little)."""
    import cv2

    from trainer.augment import _transforms, _warp_cubic, _warp_xla

    x = np.stack([part_image(i, size=96) for i in range(8)])[..., None].astype(np.float32)
    t = _transforms(NOTEBOOK, 8, 96, 96, tf.constant([4, 0], tf.int64)).numpy()
    out = _warp_cubic(tf.constant(x), tf.constant(t), -0.75).numpy()
    for i in range(8):
        ref = cv2.warpAffine(x[i, ..., 0], t[i, :6].reshape(2, 3), (96, 96),
                             flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        diff = np.abs(out[i, ..., 0] - ref)[4:-4, 4:-4]  # inside: both clamp the same way
        assert diff.mean() < 0.05 and (diff > 1.0).mean() < 0.01, (i, diff.mean(), diff.max())
    ident = np.tile(np.array([[1, 0, 0, 0, 1, 0, 0, 0]], np.float32), (8, 1))
    assert np.array_equal(_warp_cubic(tf.constant(x), tf.constant(ident)).numpy(), x)
    bilinear = _warp_xla(tf.constant(x), tf.constant(t)).numpy()
    assert (_laplacian_energy(out) > _laplacian_energy(bilinear)).all()


def test_bicubic_fallback_without_xla_gives_the_same_augmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.augment as aug

    x = batch(8)
    cfg = replace(aug.LINE_CRISP, brightness=(1.0, 1.0))
    monkeypatch.setattr(aug, "_use_xla", True)
    fused = augment(x, cfg, np.array([9, 0])).numpy()
    monkeypatch.setattr(aug, "_use_xla", False)
    plain = augment(x, cfg, np.array([9, 0])).numpy()
    assert np.abs(fused - plain).max() < 0.05 and np.abs(fused - x).mean() > 5
    with pytest.raises(ValueError, match="bicubic"):
        augment(x, replace(cfg, interpolation="lanczos"), np.array([9, 0]))


def test_backdrop_surface_matches_the_line_conditions_one() -> None:
    """Training replaces the backdrop by the rule the line-condition evaluation uses (same kernel, border)."""
    from edge.offline.conditions import backdrop_surface
    from edge.vision.partview import Circle
    from trainer.augment import _backdrop_surface

    img = part_image(3, size=300)
    c = Circle(150.0, 148.0, 110.0, found=True)
    want = backdrop_surface(img, c, 170.0)
    ys, xs = np.mgrid[0:300, 0:300]
    inside = (xs - c.cx) ** 2 + (ys - c.cy) ** 2 <= c.r ** 2
    filled = np.where(inside, 170.0, img.astype(np.float32))[None, ..., None].astype(np.float32)
    got = _backdrop_surface(tf.constant(filled)).numpy()[0, ..., 0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 0.05
    assert np.abs(want - img).max() > 20  # a smooth surface, not the image


def test_tone_matching_in_training_gives_the_edges_pixels() -> None:
    # With the geometry and the lighting left alone, an augmented batch must be exactly what the
    # edge's part_only_input makes of each image: one function, not a TensorFlow twin.
    from edge.vision.partview import Circle, InputSpec, part_only_input, part_tone

    images = np.stack([part_image(i, defect=i % 2 == 1) for i in range(4)])
    rims = [Circle(149.5 + i, 149.5 - i, 120.0 + 2 * i, found=True) for i in range(4)]
    spec = InputSpec(True, 0.08, 128, tone=part_tone(images, rims))
    cfg = replace(IDENTITY, part_only=True)
    table = np.array([[c.cx, c.cy, c.r, 170.0] for c in rims], np.float32)
    out = augment(images[..., None], cfg, np.array([1, 2]), table, spec.margin, float(spec.fill), tone=spec.tone)
    edge = np.stack([part_only_input(img, spec, c) for img, c in zip(images, rims, strict=True)])
    assert np.array_equal(out.numpy()[..., 0], edge.astype(np.float32))
    plain = augment(images[..., None], cfg, np.array([1, 2]), table, spec.margin, float(spec.fill)).numpy()[..., 0]
    assert not np.allclose(plain, edge)  # the map changed the pixels the test compares
    with pytest.raises(ValueError, match="only a part-only augmentation can take tone="):
        augment(images[..., None], IDENTITY, np.array([1, 2]), table, tone=spec.tone)
