"""Shared fixtures: the real dataset (skipped with a reason when absent) and image writers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.offline.dataset import default_data_root

ROOT = Path(__file__).resolve().parent.parent
DATA = default_data_root()


@pytest.fixture(scope="session")
def casting_data() -> Path:
    if not (DATA / "train" / "def_front").is_dir() or not (DATA / "test" / "ok_front").is_dir():
        pytest.skip(f"real dataset not found at {DATA} (set CASTING_DATA to its casting_data/ folder)")
    return DATA


def part_image(seed: int, size: int = 300, defect: bool = False) -> np.ndarray:
    """A synthetic grey 'impeller': rings on a light background, a dark blob if defective."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 170, np.uint8)
    c = size // 2
    cv2.circle(img, (c, c), int(size * 0.42), 120, -1)
    cv2.circle(img, (c, c), int(size * 0.25), 40, -1)
    cv2.circle(img, (c, c), int(size * 0.10), 200, -1)
    if defect:
        x, y = rng.integers(int(size * 0.3), int(size * 0.7), size=2)
        cv2.circle(img, (int(x), int(y)), int(size * 0.04), 10, -1)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_split(root: Path, n: int, seed: int = 0) -> None:
    """root/{def_front,ok_front}/*.jpg with n synthetic images per class."""
    for label, cls in enumerate(("ok_front", "def_front")):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(d / f"{cls}_{i}.jpg"), part_image(seed * 1000 + label * 100 + i, defect=bool(label)))
