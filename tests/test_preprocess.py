from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.preprocess import (
    ImageError,
    load_image,
    square_pad,
    to_gray_u8,
    to_model_input,
)
from tests.conftest import part_image


def test_dataset_jpeg_decodes_to_the_same_pixels_as_opencv_grayscale(casting_data: Path) -> None:
    path = next((casting_data / "test" / "def_front").glob("*.jpeg"))
    img = load_image(path)
    assert img.shape == (300, 300) and img.dtype == np.uint8
    assert np.array_equal(img, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))


def test_colour_modes_and_depths_become_8bit_gray() -> None:
    gray = part_image(1)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    bgra = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
    assert np.array_equal(to_gray_u8(bgr), gray)
    assert np.array_equal(to_gray_u8(bgra), gray)
    assert np.array_equal(to_gray_u8(gray.astype(np.uint16) * 257), gray)
    assert np.array_equal(to_gray_u8(gray.astype(np.float32) / 255.0), gray)
    with pytest.raises(ImageError, match="channel count 2"):
        to_gray_u8(np.zeros((4, 4, 2), np.uint8))


def test_non_square_images_are_padded_not_cropped() -> None:
    wide = np.zeros((100, 160), np.uint8)
    wide[:, 0] = 255
    padded = square_pad(wide)
    assert padded.shape == (160, 160)
    assert (padded[:, 0] == 255).all()  # the whole left edge survives
    assert to_model_input(wide).shape == (300, 300)
    assert to_model_input(np.zeros((600, 600, 3), np.uint8)).shape == (300, 300)


def test_bad_files_raise_image_error_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image")
    ok, enc = cv2.imencode(".jpg", part_image(2))
    (tmp_path / "cut.jpg").write_bytes(enc.tobytes()[: len(enc) // 2])
    expected = {"zero.jpg": "zero-byte", "text.jpg": "not a decodable image", "cut.jpg": "truncated JPEG",
                "missing.jpg": "cannot read"}
    for name, reason in expected.items():
        with pytest.raises(ImageError, match=reason):
            load_image(tmp_path / name)


def test_png_with_alpha_and_16_bit_png_load(tmp_path: Path) -> None:
    gray = part_image(3)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA))
    cv2.imwrite(str(tmp_path / "b.png"), gray.astype(np.uint16) * 257)
    assert np.array_equal(load_image(tmp_path / "a.png"), gray)
    assert np.array_equal(load_image(tmp_path / "b.png"), gray)
