"""Synthetic pinholes (trainer.synth): only good images change, into defects, with a small dark
pit on the flange wherever the augmentation moved it; the training stream draws them when the
recipe asks."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tests.conftest import part_image  # noqa: E402
from trainer.augment import AUGMENTATIONS, LINE_PART, LINE_PINHOLE, AugmentConfig, augment  # noqa: E402
from trainer.data import train_dataset  # noqa: E402
from trainer.synth import LIP, RADIUS, as_defects, choose, detection, draw_pits, pitted  # noqa: E402

SIZE = 120
RIM = (SIZE / 2, SIZE / 2, SIZE * 0.42, 170.0)  # part_image's rim circle and backdrop grey
STILL = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, hflip=False, vflip=False, brightness=(1.0, 1.0))
# part_image: backdrop 170, the flange ring 120 out to 0.42 of the side, a dark 40 disk inside 0.25
FLANGE_GREY = 120


def batch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.stack([part_image(i, size=SIZE) for i in range(n)])[..., None]
    labels = (np.arange(n) % 2).astype(np.float32)[:, None]  # odd = defect
    return images, labels, np.tile(np.array(RIM, np.float32), (n, 1))


def pitted_and_plain(cfg: AugmentConfig, n: int, seed: list[int]) -> tuple[np.ndarray, np.ndarray]:
    images, _, rims = batch(n)
    s = tf.constant(seed, tf.int64)
    plain = augment(images, cfg, s, rims).numpy()[..., 0]
    pitted = augment(images, cfg, s, rims, pits=tf.ones([n], tf.bool)).numpy()[..., 0]
    return pitted, plain


def test_a_pit_is_a_few_darker_pixels_on_the_flange_and_nothing_else_changes() -> None:
    pitted, plain = pitted_and_plain(STILL, 8, [3, 4])
    ys, xs = np.mgrid[:SIZE, :SIZE]
    for k in range(8):
        diff = pitted[k] - plain[k]
        changed = np.abs(diff) > 1.0
        assert 1 <= changed.sum() <= 60  # a few pixels, not a stain
        y, x = np.unravel_index(np.argmin(diff), diff.shape)
        assert diff[y, x] < -5  # darker at its centre
        rho = np.hypot(x - RIM[0], y - RIM[1]) / RIM[2]
        assert RADIUS[0] - 0.05 <= rho <= RADIUS[1] + 0.05  # on the flange, inside the rim
        assert np.hypot(xs[changed] - x, ys[changed] - y).max() <= 8
    images, _, rims = batch(4)
    none = augment(images, STILL, tf.constant([3, 4], tf.int64), rims, pits=tf.zeros([4], tf.bool)).numpy()
    assert np.allclose(none, images, atol=1e-3)


def test_the_pit_follows_the_part_through_turns_flips_zoom_and_shift() -> None:
    wild = replace(STILL, rotation=360, shift=0.1, zoom=0.1, hflip=True, vflip=True)
    pitted, plain = pitted_and_plain(wild, 32, [7, 8])
    for k in range(32):
        diff = pitted[k] - plain[k]
        y, x = np.unravel_index(np.argmin(diff), diff.shape)
        # where it was drawn, the un-pitted augmented image shows the flange's grey (not the
        # backdrop's 170 nor the opening's 40): the source place was carried to the output
        assert abs(float(np.median(plain[k][max(0, y - 1):y + 2, max(0, x - 1):x + 2])) - FLANGE_GREY) < 25, k


def test_only_good_images_are_chosen_a_share_of_them_from_the_seed_alone() -> None:
    _, labels, _ = batch(64)
    assert not choose(tf.constant(labels), 0.0, tf.constant([1, 2], tf.int64)).numpy().any()
    a = choose(tf.constant(labels), 0.5, tf.constant([1, 2], tf.int64)).numpy()
    b = choose(tf.constant(labels), 0.5, tf.constant([1, 2], tf.int64)).numpy()
    c = choose(tf.constant(labels), 0.5, tf.constant([9, 2], tf.int64)).numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not a[labels[:, 0] == 1].any() and 6 <= a.sum() <= 26  # about half of the 32 good ones
    relabelled = as_defects(tf.constant(labels), tf.constant(a)).numpy()
    assert (relabelled[a] == 1).all() and np.array_equal(relabelled[~a], labels[~a])


def test_training_stream_draws_pinholes_only_for_the_recipe_that_asks() -> None:
    images, labels, rims = batch(16)
    plain = replace(LINE_PART, backdrop=0.0)
    pitted = replace(plain, pinholes=1.0)

    def first_labels(cfg: AugmentConfig) -> np.ndarray:
        ds = train_dataset(images[..., 0], labels[:, 0], 16, cfg, seed=5, circles=rims, margin=0.06, fill=128.0)
        return next(iter(ds))[1].numpy()

    assert first_labels(plain).sum() == 8 and first_labels(pitted).sum() == 16
    with pytest.raises(ValueError, match="rim circle"):
        train_dataset(images[..., 0], labels[:, 0], 16, pitted, seed=5)
    assert AUGMENTATIONS["line-pinhole"] == LINE_PINHOLE == replace(LINE_PART, pinholes=0.15)


def test_cli_offers_every_recipe() -> None:
    from trainer import cli

    parser = cli.build_parser()
    actions = {a.dest: a for sub in parser._subparsers._group_actions for p in sub.choices.values() for a in p._actions}
    assert set(actions["augment"].choices) == {"auto", *AUGMENTATIONS}


def test_fixed_ranges_draw_pits_of_that_depth_for_the_detection_bench() -> None:
    images, _, rims = batch(6)
    flat = np.full_like(images, 150, dtype=np.float32)  # plain metal: the pit alone changes it
    identity = tf.constant(np.tile(np.array([1, 0, 0, 0, 1, 0, 0, 0], np.float32), (6, 1)))
    for depth in (0.2, 0.5):
        out = draw_pits(tf.constant(flat), tf.ones([6], tf.bool), tf.constant(rims), identity,
                        tf.constant([2, 3], tf.int64), sigma_range=(1.2, 1.2), depth_range=(depth, depth)).numpy()
        darkest = out.reshape(6, -1).min(axis=1) / 150.0 - 1.0
        # at most `depth` darker at the pit's centre, less where the lip overlaps it or the centre
        # falls between pixels
        assert (darkest >= -depth - 1e-4).all() and (darkest <= -depth * (1 - LIP[1] * 0.28) * 0.75).all()


def test_detection_counts_what_the_judge_decides_on_the_pitted_parts(casting_data: Path) -> None:
    from edge.inference import bundle as bundle_fmt
    from edge.inference.judge import Judge
    from edge.vision.preprocess import load_image

    judge = Judge.from_bundle(bundle_fmt.load(Path(__file__).parents[2] / "models/casting-cnn"))
    files = sorted((casting_data / "train/ok_front").iterdir())[:12]
    good = np.stack([load_image(f) for f in files])
    rims = [judge.rim(img) for img in good]
    table = detection(judge, good, rims, depths=(0.6,), sigmas=(2.2,), seed=3)
    once = pitted(good, rims, 0.6, 2.2, seed=3)
    changed = (once != good).reshape(12, -1).sum(axis=1)
    assert (changed > 0).all() and (changed < 300).all()  # one small patch on each part
    expected = np.mean([j.decision != "accept" for j in judge.judge_all(once)])
    assert table["rejected"] == {"0.6": {"2.2": round(float(expected), 4)}} and table["parts"] == 12
    clean = np.mean([j.decision != "accept" for j in judge.judge_all(good)])
    assert table["clean_rejected"] == round(float(clean), 4) < 1.0  # real good parts: the model decides them
