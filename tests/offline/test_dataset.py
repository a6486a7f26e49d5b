import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.offline.dataset import (
    DatasetError,
    file_digests,
    fingerprint,
    is_image_file,
    list_labelled,
    list_unlabelled,
    load_samples,
    scan_labelled,
    stratified_split,
)
from tests.conftest import part_image, write_split


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


def test_symlinked_folders_are_followed_once_and_loops_end(tmp_path: Path) -> None:
    write_split(tmp_path / "data", 1)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cv2.imwrite(str(outside / "linked.jpg"), part_image(7))
    ok = tmp_path / "data" / "ok_front"
    (ok / "batch2").symlink_to(outside, target_is_directory=True)
    (ok / "again").symlink_to(outside, target_is_directory=True)  # the same folder twice: listed once
    (ok / "loop").symlink_to(ok, target_is_directory=True)  # a cycle must not hang or repeat files
    (ok / "other_class").symlink_to(tmp_path / "data" / "def_front", target_is_directory=True)
    names = [s.path.relative_to(tmp_path / "data").as_posix() for s in list_labelled(tmp_path / "data")]
    # each folder once; never a defect image under the ok label through a link
    assert names == ["ok_front/again/linked.jpg", "ok_front/ok_front_0.jpg", "def_front/def_front_0.jpg"]
    unlabelled = [s.path.name for s in list_unlabelled(tmp_path / "data")]
    assert sorted(unlabelled) == ["def_front_0.jpg", "linked.jpg", "ok_front_0.jpg"]


def test_images_outside_the_class_folders_are_counted_and_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_split(tmp_path, 1)
    (tmp_path / "ok_front").rename(tmp_path / "OK")
    (tmp_path / "def_front").rename(tmp_path / "defect")
    for rel in ("top.jpg", "2026-11-25/a.png", "2026-11-25/b.jpeg", "2026-11-25/notes.txt"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="edge.offline.dataset"):
        samples, outside = scan_labelled(tmp_path)
    assert len(samples) == 2
    assert [p.relative_to(tmp_path).as_posix() for p in outside] == ["2026-11-25/a.png", "2026-11-25/b.jpeg",
                                                                      "top.jpg"]
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "3 image file(s) outside the class folders (OK, defect)" in warning
    assert f"e.g. {tmp_path / '2026-11-25' / 'a.png'}" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge.offline.dataset"):
        assert list_labelled(tmp_path) == samples  # the trainer hears it too
    assert "3 image file(s) outside" in caplog.text


def test_listing_of_the_real_dataset_is_unchanged(casting_data: Path) -> None:
    # The trainer's files and their order: what rglob gave before symlinks were followed.
    for split in ("train", "test"):
        samples, outside = scan_labelled(casting_data / split)
        expected = [p for cls in ("ok_front", "def_front")
                    for p in sorted((casting_data / split / cls).rglob("*")) if p.is_file() and is_image_file(p)]
        assert [s.path for s in samples] == expected and not outside
