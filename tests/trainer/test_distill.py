"""Distillation (`--teacher`): the targets it trains on, and the teachers it refuses."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from edge.inference import bundle  # noqa: E402
from tests.conftest import write_split  # noqa: E402
from trainer import distill  # noqa: E402
from trainer.cli import main  # noqa: E402
from trainer.loop import LabelAccuracy, LabelAUC  # noqa: E402

QUICK = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--max-int8-drop", "100"]


def _constant_model(p: float) -> keras.Model:
    """A model that scores every image p, whatever its pixels."""
    inp = keras.Input((300, 300, 1))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant(float(np.log(p / (1 - p)))))(x)
    return keras.Model(inp, out)


def test_targets_blend_the_label_with_the_teachers_logit_mean() -> None:
    teachers = [distill.Teacher(Path(f"t{i}"), _constant_model(p), {}) for i, p in enumerate((0.2, 0.9))]
    images = tf.zeros((4, 300, 300, 1))
    labels = tf.constant([[0.0], [1.0], [0.0], [1.0]])
    ds = distill.soften(tf.data.Dataset.from_tensors((images, labels)), teachers, 0.5)
    _, targets = next(iter(ds))
    logit_mean = (np.log(0.2 / 0.8) + np.log(0.9 / 0.1)) / 2
    p = 1 / (1 + np.exp(-logit_mean))  # 0.6, not the probabilities' mean 0.55
    np.testing.assert_allclose(targets.numpy().ravel(), [0.5 * p, 0.5 + 0.5 * p] * 2, rtol=1e-5)


def test_adapt_blends_the_bases_opinion_into_the_marked_old_line_images_only() -> None:
    images = tf.zeros((4, 300, 300, 1))
    labels = tf.constant([[0.0], [1.0], [distill.MARKED + 0.0], [distill.MARKED + 1.0]])  # new, new, old, old
    ds = distill.soften_marked(tf.data.Dataset.from_tensors((images, labels)), _constant_model(0.2), 0.5)
    _, targets = next(iter(ds))
    np.testing.assert_allclose(targets.numpy().ravel(), [0.0, 1.0, 0.1, 0.6], rtol=1e-5)


def test_training_metrics_judge_blended_targets_by_their_label() -> None:
    y_true = np.array([[0.3], [0.7], [0.05], [0.95]], np.float32)  # blended targets of labels 0, 1, 0, 1
    y_pred = np.array([[0.1], [0.9], [0.6], [0.8]], np.float32)
    acc = LabelAccuracy()
    acc.update_state(y_true, y_pred)
    assert float(acc.result()) == pytest.approx(0.75)
    plain = keras.metrics.BinaryAccuracy()
    plain.update_state(y_true, y_pred)
    assert float(plain.result()) == 0.0  # what the blended targets would have shown
    auc = LabelAUC()
    auc.update_state(y_true, y_pred)
    assert float(auc.result()) == pytest.approx(1.0)


def _fitter(tmp_path: Path, data: Path) -> Callable[..., int]:
    def fit(out: str, *extra: str, on: Path = data) -> int:
        return main(["fit", "--data", str(on), "--out", str(tmp_path / out), "--arch", "seed", *QUICK, *extra])
    return fit


def _two_datasets(tmp_path: Path) -> tuple[Path, Path]:
    data, other = tmp_path / "data", tmp_path / "other"
    for root, seed in ((data, 1), (other, 3)):
        write_split(root / "train", 12, seed=seed)
        write_split(root / "test", 4, seed=seed + 1)
    return data, other


def test_fit_distils_and_a_resume_keeps_its_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = _two_datasets(tmp_path)
    fit = _fitter(tmp_path, data)

    assert fit("teacher") == 0
    assert fit("plain", "--seed", "7") == 0
    assert fit("student", "--seed", "7", "--teacher", str(tmp_path / "teacher")) == 0
    meta = bundle.load(tmp_path / "student").meta
    record = meta["training"]["distillation"]
    assert record["weight"] == 0.5 and [t["bundle"] for t in record["teachers"]] == [str(tmp_path / "teacher")]
    assert len(record["teachers"][0]["float_model_sha256"]) == 64
    assert meta["training"]["options"]["teachers"] == [str(tmp_path / "teacher")]
    assert "- Distilled: " in (tmp_path / "student/report.md").read_text()
    assert "Distilled" not in (tmp_path / "plain/report.md").read_text()
    assert bundle.load(tmp_path / "plain").meta["training"]["distillation"] is None
    # Same seed, same images: only the teacher's targets can make the weights differ.
    assert meta["sha256"] != bundle.load(tmp_path / "plain").meta["sha256"]
    capsys.readouterr()
    assert fit("teacher", "--teacher", str(tmp_path / "teacher"), "--force") == 2
    assert "a model cannot teach itself" in capsys.readouterr().err
    assert bundle.load(tmp_path / "teacher")  # refused before --force could clear it
    assert fit("plain", "--seed", "7", "--distill-weight", "0.3", "--force") == 2  # would be ignored
    assert "--distill-weight without --teacher" in capsys.readouterr().err
    assert bundle.load(tmp_path / "plain")  # refused before --force could clear it

    # A resume may not add, drop or swap a teacher.
    assert fit("student", "--seed", "7", "--resume") == 2
    assert "--teacher [" in capsys.readouterr().err
    saved = json.loads((tmp_path / "student/checkpoints/options.json").read_text())
    assert saved["options"]["teachers"] == [f"{tmp_path / 'teacher'} (float model "
                                            f"{record['teachers'][0]['float_model_sha256'][:16]})"]
    assert fit("student", "--seed", "7", "--teacher", str(tmp_path / "teacher"), "--resume") == 0  # same teacher
    # ... nor a teacher retrained in place since the interruption.
    assert fit("teacher", "--seed", "11", "--force") == 0
    capsys.readouterr()
    assert fit("student", "--seed", "7", "--teacher", str(tmp_path / "teacher"), "--resume") == 2
    assert "--teacher [" in capsys.readouterr().err


def test_fit_refuses_teachers_that_may_know_the_validation_images(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, other = _two_datasets(tmp_path)
    fit = _fitter(tmp_path, data)
    assert fit("split9", "--split-seed", "9") == 0
    assert fit("elsewhere", on=other) == 0
    capsys.readouterr()
    refusals = {"split9": "split its training data differently", "elsewhere": "trained on other images",
                "nothing-here": "nothing-here"}
    for teacher, message in refusals.items():
        assert fit("refused", "--teacher", str(tmp_path / teacher), "--force") == 2
        err = capsys.readouterr().err
        assert message in err and f"--teacher {tmp_path / teacher}" in err and "Traceback" not in err
    assert fit("typo", "--teacher", str(tmp_path / "nothing-here")) == 2
    assert not (tmp_path / "typo").exists()  # nothing written, so the corrected command needs no --force
    assert fit("refused", "--teacher", str(tmp_path / "elsewhere"), "--distill-weight", "0.7", "--force") == 2
    assert "--distill-weight must be above 0 and at most 0.5" in capsys.readouterr().err
