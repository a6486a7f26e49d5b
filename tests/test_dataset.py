from pathlib import Path

import numpy as np
import pytest

from edge.dataset import (
    DatasetError,
    file_digests,
    fingerprint,
    list_labelled,
    load_samples,
    stratified_split,
)
from tests.conftest import write_split


def test_missing_and_empty_class_folders_are_named(tmp_path: Path) -> None:
    write_split(tmp_path, 2)
    for f in (tmp_path / "def_front").iterdir():
        f.unlink()
    (tmp_path / "def_front" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="def_front: class folder holds no image files"):
        list_labelled(tmp_path)
    (tmp_path / "def_front" / "notes.txt").unlink()
    (tmp_path / "def_front").rmdir()
    with pytest.raises(DatasetError, match="missing class folder 'def_front'"):
        list_labelled(tmp_path)


def test_aliases_are_case_insensitive(tmp_path: Path) -> None:
    write_split(tmp_path, 2)
    (tmp_path / "ok_front").rename(tmp_path / "OK")
    (tmp_path / "def_front").rename(tmp_path / "Defect")
    labels = [s.label for s in list_labelled(tmp_path)]
    assert labels == [0, 0, 1, 1]


def test_bad_files_are_skipped_and_listed(tmp_path: Path) -> None:
    write_split(tmp_path, 3)
    (tmp_path / "ok_front" / "empty.jpg").write_bytes(b"")
    (tmp_path / "def_front" / "text.jpeg").write_text("hello")
    loaded = load_samples(list_labelled(tmp_path))
    assert len(loaded.paths) == 6 and loaded.images.shape == (6, 300, 300)
    assert sorted((p.name, why.split(" (")[0]) for p, why in loaded.skipped) == [
        ("empty.jpg", "zero-byte file"), ("text.jpeg", "not a decodable image")]


def test_stratified_split_is_seeded_and_per_class() -> None:
    labels = np.array([1] * 3758 + [0] * 2875)
    fit, val = stratified_split(labels, 0.2, 123)
    assert len(val) == 1326 and len(fit) == 5307  # as the notebook's Keras split
    assert (labels[val] == 1).sum() == 751
    assert not set(fit) & set(val)
    again = stratified_split(labels, 0.2, 123)[1]
    assert np.array_equal(val, again)
    assert not np.array_equal(val, stratified_split(labels, 0.2, 7)[1])


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    write_split(tmp_path, 2)
    samples = list_labelled(tmp_path)
    before = fingerprint(samples, tmp_path, file_digests(samples))
    (tmp_path / "ok_front" / "ok_front_0.jpg").write_bytes((tmp_path / "ok_front" / "ok_front_1.jpg").read_bytes())
    assert fingerprint(samples, tmp_path, file_digests(samples)) != before
