"""Labelled and unlabelled image folders: listing, labels, loading with skips.

Shared by the trainer (fit/evaluate) and replay, so both read a folder the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.vision.preprocess import IMAGE_SIZE, ImageError, is_image_file, load_image

log = logging.getLogger(__name__)

CLASS_NAMES = ("ok_front", "def_front")  # index == label: ok 0, defect 1
POSITIVE_CLASS = "def_front"
# Folder names accepted for each label, compared case-insensitively.
CLASS_ALIASES = {"ok_front": 0, "ok": 0, "def_front": 1, "defect": 1, "def": 1}


DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "casting_data"


def default_data_root() -> Path:
    """$CASTING_DATA, else ../shared/datasets/casting_data beside the project root."""
    return Path(os.environ.get("CASTING_DATA") or DEFAULT_DATA)


class DatasetError(ValueError):
    """A folder that cannot be used as a dataset; the message names the path."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int | None  # None when unlabelled


@dataclass
class LoadedImages:
    """Decoded model inputs plus the files that were skipped and why."""

    images: np.ndarray  # uint8 (N, H, W)
    labels: np.ndarray  # int8 (N,), -1 where unknown
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _class_dirs(root: Path) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() in CLASS_ALIASES:
            found.setdefault(CLASS_ALIASES[child.name.lower()], []).append(child)
    return found


DirId = tuple[int, int]  # (st_dev, st_ino): one folder however it is reached


def _dir_id(path: Path | str) -> DirId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk(folder: Path, skip: frozenset[str] = frozenset(), fenced: frozenset[DirId] = frozenset()) -> list[Path]:
    """Image files below `folder`, sorted as Paths, following symlinked folders.

    A folder reached twice (two links to it, or a link back up the tree) is listed once,
    so a cycle ends. Broken links are kept: they fail later with a reason instead of
    vanishing. `skip` names top-level subfolders (lower case) to leave out; a link into a
    `fenced` folder (another class folder, the labelled root) is not followed, so no image
    is listed under a second label.
    """
    seen: set[DirId] = set()
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        log.warning(f"cannot list folder {exc.filename}: {exc.strerror or exc}; its images are not used")

    top = str(folder)
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        ident = _dir_id(dirpath)
        if ident is None:
            log.warning(f"cannot list folder {dirpath}: it vanished or cannot be read; its images are not used")
            dirnames[:] = []
            continue
        if ident in seen:
            log.info(f"folder {dirpath} already listed through another path; skipped")
            dirnames[:] = []
            continue
        if ident in fenced and dirpath != top:
            log.warning(f"folder {dirpath} links to {os.path.realpath(dirpath)}, listed on its own; skipped here")
            dirnames[:] = []
            continue
        seen.add(ident)
        dirnames.sort()
        if skip and dirpath == top:
            dirnames[:] = [d for d in dirnames if d.lower() not in skip]
        for name in filenames:
            path = Path(dirpath, name)
            if is_image_file(path) and (path.is_file() or path.is_symlink()):
                found.append(path)
    return sorted(found)


def scan_labelled(root: str | Path, require_both: bool = True) -> tuple[list[Sample], list[Path]]:
    """Samples of a labelled folder, and the image files outside its class folders.

    Those outside files are not used (they have no label); they are logged with a count
    and an example so a folder is never silently half-scored.
    """
    root = Path(root)
    samples = _labelled_samples(root, require_both)
    fenced = _fence(root)
    outside = _walk(root, skip=frozenset(CLASS_ALIASES), fenced=fenced)
    if outside:
        log.warning(
            f"{root}: {len(outside)} image file(s) outside the class folders "
            f"({', '.join(sorted({d.name for ds in _class_dirs(root).values() for d in ds}))}) "
            f"are not used, e.g. {outside[0]}"
        )
    return samples, outside


def list_labelled(root: str | Path, require_both: bool = True) -> list[Sample]:
    """Samples of a folder with one subfolder per class (def_front/ok_front, defect/ok).

    Raises DatasetError naming the folder when a class folder is missing or holds no
    image files: training on one class silently would produce a useless model.
    Replay passes require_both=False: a folder of defects alone is a fine check.
    Image files outside the class folders are warned about (see scan_labelled).
    """
    return scan_labelled(root, require_both)[0]


def _labelled_samples(root: Path, require_both: bool) -> list[Sample]:
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    dirs = _class_dirs(root)
    fence = _fence(root)
    samples: list[Sample] = []
    for label, name in enumerate(CLASS_NAMES):
        if label not in dirs and not require_both:
            continue
        if label not in dirs:
            raise DatasetError(
                f"{root}: missing class folder '{name}' (expected subfolders "
                f"{' and '.join(CLASS_NAMES)}, or ok and defect)"
            )
        images = [p for d in dirs[label] for p in _walk(d, fenced=fence)]
        if not images and require_both:
            where = ", ".join(str(d) for d in dirs[label])
            raise DatasetError(f"{where}: class folder holds no image files")
        samples.extend(Sample(p, label) for p in images)
    return samples


def _fence(root: Path) -> frozenset[DirId]:
    """The labelled root and its class folders: a link into one of them is not followed."""
    ids = [_dir_id(root)] + [_dir_id(d) for ds in _class_dirs(root).values() for d in ds]
    return frozenset(i for i in ids if i is not None)


def is_labelled(root: str | Path) -> bool:
    root = Path(root)
    return root.is_dir() and bool(_class_dirs(root))


def list_unlabelled(root: str | Path) -> list[Sample]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    return [Sample(p, None) for p in _walk(root)]


def load_samples(samples: list[Sample], size: tuple[int, int] = IMAGE_SIZE) -> LoadedImages:
    """Decode every sample once; unreadable files are skipped, logged and returned."""
    images = np.empty((len(samples), *size), dtype=np.uint8)
    labels = np.empty(len(samples), dtype=np.int8)
    paths: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    n = 0
    for s in samples:
        try:
            images[n] = load_image(s.path, size)
        except ImageError as exc:
            log.warning("skipping image", extra={"path": str(s.path), "reason": str(exc)})
            skipped.append((s.path, str(exc)))
            continue
        labels[n] = -1 if s.label is None else s.label
        paths.append(s.path)
        n += 1
    return LoadedImages(images[:n], labels[:n], paths, skipped)


def file_digests(samples: list[Sample]) -> dict[Path, str]:
    """sha256 of each sample file's bytes ("unreadable" where it cannot be read)."""
    out = {}
    for s in samples:
        try:
            out[s.path] = hashlib.sha256(s.path.read_bytes()).hexdigest()
        except OSError:
            out[s.path] = "unreadable"
    return out


def fingerprint(samples: list[Sample], root: str | Path, digests: dict[Path, str]) -> str:
    """sha256 over (relative path, label, file sha256) of every sample: names the data."""
    h = hashlib.sha256()
    root = Path(root)
    for s in sorted(samples, key=lambda s: str(s.path)):
        rel = s.path.relative_to(root) if s.path.is_relative_to(root) else s.path
        h.update(f"{rel.as_posix()}\t{s.label}\t{digests[s.path]}\n".encode())
    return h.hexdigest()


def first_per_class(samples: list[Sample], n: int | None) -> list[Sample]:
    """The first `n` samples of each class (all when None): quick runs and CI use a few."""
    if n is None:
        return samples
    kept: list[Sample] = []
    for label in range(len(CLASS_NAMES)):
        kept += [s for s in samples if s.label == label][:n]
    return kept


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: (fit indices, validation indices), both sorted."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(len(idx) * fraction)  # floor, as Keras did: 1326 of 6633
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))
