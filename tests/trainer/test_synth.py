"""Synthetic pinholes (trainer.synth): only good images change, into defects, with a small dark
pit on the flange; the training stream draws them when the recipe asks."""

from dataclasses import replace

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tests.conftest import part_image  # noqa: E402
from trainer.augment import AUGMENTATIONS, LINE_PART, LINE_PINHOLE, AugmentConfig  # noqa: E402
from trainer.data import train_dataset  # noqa: E402
from trainer.synth import RADIUS, add_pinholes  # noqa: E402

SIZE = 120
RIM = (SIZE / 2, SIZE / 2, SIZE * 0.42, 170.0)  # part_image's rim circle and backdrop grey


def batch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.stack([part_image(i, size=SIZE) for i in range(n)])[..., None]
    labels = (np.arange(n) % 2).astype(np.float32)[:, None]  # odd = defect
    return images, labels, np.tile(np.array(RIM, np.float32), (n, 1))


def test_every_good_image_gets_one_small_dark_pit_on_its_flange_and_becomes_a_defect() -> None:
    images, labels, rims = batch(8)
    out, out_labels = add_pinholes(images, labels, rims, 1.0, tf.constant([3, 4], tf.int64))
    out, out_labels = out.numpy(), out_labels.numpy()
    assert (out_labels == 1).all()
    ys, xs = np.mgrid[:SIZE, :SIZE]
    for k in range(8):
        diff = out[k, ..., 0] - images[k, ..., 0].astype(np.float32)
        if labels[k, 0] == 1:  # a defect stays exactly as it was
            assert np.array_equal(out[k], images[k].astype(np.float32))
            continue
        changed = np.abs(diff) > 1.0
        assert 1 <= changed.sum() <= 60  # a few pixels, not a stain
        y, x = np.unravel_index(np.argmin(diff), diff.shape)
        assert diff[y, x] < -5  # darker at its centre
        rho = np.hypot(x - RIM[0], y - RIM[1]) / RIM[2]
        assert RADIUS[0] - 0.05 <= rho <= RADIUS[1] + 0.05  # on the flange, inside the rim
        assert np.hypot(xs[changed] - x, ys[changed] - y).max() <= 8


def test_share_zero_changes_nothing_and_a_share_is_drawn_from_the_seed_alone() -> None:
    images, labels, rims = batch(64)
    out, out_labels = add_pinholes(images, labels, rims, 0.0, tf.constant([1, 2], tf.int64))
    assert np.array_equal(out.numpy(), images.astype(np.float32)) and np.array_equal(out_labels.numpy(), labels)
    a = add_pinholes(images, labels, rims, 0.5, tf.constant([1, 2], tf.int64))
    b = add_pinholes(images, labels, rims, 0.5, tf.constant([1, 2], tf.int64))
    c = add_pinholes(images, labels, rims, 0.5, tf.constant([9, 2], tf.int64))
    assert np.array_equal(a[0].numpy(), b[0].numpy()) and not np.array_equal(a[0].numpy(), c[0].numpy())
    turned = int(a[1].numpy().sum() - labels.sum())
    assert 6 <= turned <= 26  # about half of the 32 good ones


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
