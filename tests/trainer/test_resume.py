"""trainer.resume: what a --resume must repeat, checked against the record the first run left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.resume import RECORD, TRAINING_OPTIONS, ResumeMismatch, check_options


def options(**over: object) -> dict:
    base = {"arch": "edge", "steps_per_epoch": 150, "batch_size": 64, "seed": 123, "split_seed": 123,
            "val_fraction": 0.2, "learning_rate": 1e-3, "augment": "line", "limit": None, "teachers": [],
            "distill_weight": 0.5, "init": None, "rim_finder": "half", "tone": "none"}
    assert set(base) == set(TRAINING_OPTIONS)
    return {**base, **over}


def recorded(tmp_path: Path, **over: object) -> Path:
    (tmp_path / RECORD).write_text(json.dumps({"options": options(**over), "train_fingerprint": "f" * 16}))
    return tmp_path


def test_a_distillation_weight_without_teachers_is_no_difference(tmp_path: Path) -> None:
    # Runs from before --distill-weight required --teacher could record any weight; with no
    # teacher it shaped nothing, so resuming them must not be refused for it.
    check_options(recorded(tmp_path, distill_weight=0.3), options())
    with pytest.raises(ResumeMismatch, match=r"--distill-weight 0.3 \(now 0.5\)"):
        check_options(recorded(tmp_path, distill_weight=0.3, teachers=["t"]), options(teachers=["t"]))
    with pytest.raises(ResumeMismatch, match=r"--teacher \[\] \(now \['t'\]\)"):
        check_options(recorded(tmp_path), options(teachers=["t"]))
    with pytest.raises(ResumeMismatch, match=r"--seed 123 \(now 7\)"):
        check_options(recorded(tmp_path), options(seed=7))


def test_a_record_from_before_the_rim_finder_resumes_only_with_the_half_size_finder(tmp_path: Path) -> None:
    old = options()
    del old["rim_finder"]  # what runs before --rim-finder recorded
    (tmp_path / RECORD).write_text(json.dumps({"options": old, "train_fingerprint": "f" * 16}))
    check_options(tmp_path, options())
    with pytest.raises(ResumeMismatch, match=r"--rim-finder 'half' \(now 'combined'\)"):
        check_options(tmp_path, options(rim_finder="combined"))


def test_a_record_from_before_tone_matching_resumes_only_without_it(tmp_path: Path) -> None:
    old = options()
    del old["tone"]  # what runs before --tone recorded
    (tmp_path / RECORD).write_text(json.dumps({"options": old, "train_fingerprint": "f" * 16}))
    check_options(tmp_path, options())
    with pytest.raises(ResumeMismatch, match=r"--tone 'none' \(now 'match'\)"):
        check_options(tmp_path, options(tone="match"))


def test_init_weights_must_match_by_digest_wherever_the_bundle_now_lies(tmp_path: Path) -> None:
    was = {"path": "models/casting-cnn-crisp", "float_model_sha256": "a" * 64}
    # the same weights, moved: resumes
    check_options(recorded(tmp_path, init=was), options(init={**was, "path": "models/casting-cnn"}))
    with pytest.raises(ResumeMismatch, match="--init"):
        check_options(recorded(tmp_path, init=was), options(init={**was, "float_model_sha256": "b" * 64}))
    with pytest.raises(ResumeMismatch, match="--init"):
        check_options(recorded(tmp_path, init=was), options())
