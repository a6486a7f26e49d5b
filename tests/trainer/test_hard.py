"""Hard examples (trainer.hard): what is mined, how often it is drawn, and what keeps a pit visible."""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from edge.inference import bundle  # noqa: E402
from edge.inference.model import Classifier  # noqa: E402
from edge.offline.dataset import list_labelled, load_samples, stratified_split  # noqa: E402
from trainer.augment import GENTLE_MOTION, AugmentConfig, augment  # noqa: E402
from trainer.cli import main  # noqa: E402
from trainer.hard import HARD_DEFECT_P, RECORD, Mined  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "casting-cnn"
QUICK = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--max-int8-drop", "100", "--views", "1"]
# Fit defects of the real training folder that the shipped bundle scores below 0.5 (pinholes on the
# flange), and ordinary ones; the test reads which of them its split puts in fit.
HARD = ("7057", "4669", "3047", "4932", "4710", "7878")
EASY_DEFECTS = ("0", "1", "1000", "1001", "1002", "1003")
DOUBTFUL_GOOD = ("1022", "5116", "598")


def test_an_epoch_draws_each_mined_image_k_times_and_only_the_mined_defects_gently() -> None:
    mined = Mined(defects=np.array([2, 5]), goods=np.array([7]), p=np.zeros(10), threshold=0.1)
    drawn = Counter(mined.pool(10, 3).tolist())
    assert drawn == {**{i: 1 for i in range(10)}, 2: 3, 5: 3, 7: 3}
    assert mined.pool(10, 1).tolist() == list(range(10))
    assert np.flatnonzero(mined.gentle(10)).tolist() == [2, 5]


def test_a_gentle_image_keeps_a_pit_that_defocus_and_motion_streaks_wash_out() -> None:
    img = np.full((48, 48), 150.0, np.float32)
    img[23:25, 23:25] = 100.0  # a 2 px pit, a third darker than the metal
    n = 64
    x = np.repeat(img[None, ..., None], n, axis=0)
    cfg = AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, hflip=False, vflip=False, brightness=(1.0, 1.0),
                        blur=0.5, sharpen=0.5, motion_blur=7.0)
    gentle = np.arange(n) % 2 == 0
    out = augment(x, cfg, np.array([7, 8]), gentle=tf.constant(gentle)).numpy()[..., 0]
    depth = 150.0 - out[:, 20:28, 20:28].min(axis=(1, 2))
    # at most 2 px of streak and no defocus: the pit keeps at least half its depth in every image
    assert depth[gentle].min() >= 25
    # the same draws without the flag: longer streaks and defocus leave it far shallower in some
    assert depth[~gentle].min() < 20 and np.median(depth[~gentle]) < np.median(depth[gentle])
    assert GENTLE_MOTION == 2.0


def _data(root: Path, casting_data: Path) -> Path:
    """A small labelled folder of links to real images (nothing copied)."""
    src = casting_data / "train"
    picks = {"def_front": [f"cast_def_0_{n}.jpeg" for n in HARD + EASY_DEFECTS],
             "ok_front": sorted(p.name for p in (src / "ok_front").iterdir())[:10]
             + [f"cast_ok_0_{n}.jpeg" for n in DOUBTFUL_GOOD]}
    for cls, names in picks.items():
        for split in ("train", "test"):
            (root / split / cls).mkdir(parents=True)
        for name in names:
            (root / "train" / cls / name).symlink_to(src / cls / name)
        for name in sorted(p.name for p in (casting_data / "test" / cls).iterdir())[:4]:
            (root / "test" / cls / name).symlink_to(casting_data / "test" / cls / name)
    return root


def test_a_hard_example_fit_mines_with_the_init_bundle_and_keeps_its_list_on_resume(
        casting_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = _data(tmp_path / "data", casting_data), tmp_path / "run"
    args = ["fit", "--data", str(data), "--out", str(out), "--rim-finder", "combined"] + QUICK
    assert main(args + ["--hard-examples", "4"]) == 2  # nothing to mine with
    assert "--hard-examples 4 needs --init BUNDLE" in capsys.readouterr().err
    assert main(args + ["--hard-examples", "-1", "--init", str(SHIPPED)]) == 2
    assert "--hard-examples must be 0 (off) or at least 1, got -1" in capsys.readouterr().err
    weights_only = tmp_path / "weights-only"  # float weights to start from, but no bundle to mine with
    weights_only.mkdir()
    shutil.copy(SHIPPED / "model.keras", weights_only / "model.keras")
    assert main(args + ["--hard-examples", "4", "--init", str(weights_only)]) == 2
    assert f"--hard-examples mines with the --init bundle, and {weights_only} is none" in capsys.readouterr().err
    assert not out.exists()

    args += ["--init", str(SHIPPED), "--hard-examples", "4"]
    assert main(args) == 0
    record = json.loads((out / "checkpoints" / RECORD).read_text())
    # the fit images as the run split them, scored afresh with the shipped bundle
    samples = list_labelled(data / "train")
    loaded = load_samples(samples)
    fit_idx, _ = stratified_split(loaded.labels, 0.2, 123)
    names = [f"{loaded.paths[i].parent.name}/{loaded.paths[i].name}" for i in fit_idx]
    shipped = bundle.load(SHIPPED)
    p = Classifier.from_bundle(shipped).predict(loaded.images[fit_idx])
    y = loaded.labels[fit_idx]
    want_defects = [names[i] for i in np.flatnonzero((y == 1) & (p < HARD_DEFECT_P))]
    want_goods = [names[i] for i in np.flatnonzero((y == 0) & (p >= shipped.threshold))]
    assert [e["image"] for e in record["defects"]] == want_defects and len(want_defects) >= 2
    assert [e["image"] for e in record["goods"]] == want_goods
    assert all(n.split("_")[-1].removesuffix(".jpeg") in HARD for n in want_defects)
    assert json.loads((out / "metrics.json").read_text())["hard_examples"] == record
    assert bundle.load(out).meta["training"]["hard_examples"]["repeats"] == 4

    # a resumed run draws the same list, read back rather than mined again
    before = (out / "checkpoints" / RECORD).read_text()
    assert main([*args[:args.index("--epochs")], "--epochs", "2", *args[args.index("--epochs") + 2:], "--resume"]) == 0
    assert (out / "checkpoints" / RECORD).read_text() == before
    (out / "checkpoints" / RECORD).write_text(before.replace(want_defects[0], "def_front/nowhere.jpeg"))
    assert main([*args[:args.index("--epochs")], "--epochs", "3", *args[args.index("--epochs") + 2:], "--resume"]) == 2
    assert "names a fit image this run does not have" in capsys.readouterr().err
