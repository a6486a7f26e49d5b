import cv2
import numpy as np
import pytest

from edge.offline.perturb import FOCUS_CHANGES, blur, perturb_all, refocus_all, sharpen
from tests.conftest import part_image


def laplacian_var(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F).var())


def test_sharpen_and_blur_move_crispness_monotonically() -> None:
    g = part_image(3, defect=True)
    assert np.array_equal(sharpen(g, 0.0), g)
    crisp = [laplacian_var(sharpen(g, a)) for a in (0.0, 0.5, 1.0)]
    soft = [laplacian_var(blur(g, s)) for s in (0.5, 1.0)]
    assert crisp[0] < crisp[1] < crisp[2]
    assert crisp[0] > soft[0] > soft[1]


def test_sharpen_clips_to_pixel_range() -> None:
    g = np.zeros((40, 40), np.uint8)
    g[10:30, 10:30] = 250
    out = sharpen(g, 3.0)
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0


@pytest.mark.parametrize("change", sorted(FOCUS_CHANGES))
def test_refocus_all_applies_one_change_to_every_image(change: str) -> None:
    stack = np.stack([part_image(i, size=64) for i in range(3)])
    out = refocus_all(stack, change)
    assert out.shape == stack.shape and out.dtype == np.uint8
    assert all(np.array_equal(o, FOCUS_CHANGES[change](s)) for o, s in zip(out, stack))
    assert not np.array_equal(out, stack)


def test_perturbations_are_seeded() -> None:
    stack = np.stack([part_image(i, size=64) for i in range(3)])
    assert np.array_equal(perturb_all(stack, 5), perturb_all(stack, 5))
    assert not np.array_equal(perturb_all(stack, 5), perturb_all(stack, 6))
