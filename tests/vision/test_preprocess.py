from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.preprocess import (
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


def test_tiffs_of_every_depth_are_converted_or_refused_with_a_reason(tmp_path: Path) -> None:
    # A float or signed TIFF used to escape as cv2.error (stopping a replay), and a float
    # TIFF stored in 0..255 was clipped to white and scored as a good part.
    gray = part_image(4)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(tmp_path / "bgr_f64.tiff"), bgr.astype(np.float64) / 255)
    cv2.imwrite(str(tmp_path / "gray_f32.tiff"), gray.astype(np.float32) / 255)
    for name in ("bgr_f64.tiff", "gray_f32.tiff"):
        assert np.array_equal(load_image(tmp_path / name), gray), name
    refused = {
        "bgr_s16.tiff": (bgr.astype(np.int16), "unsupported pixel type int16"),
        "bgr_s32.tiff": (bgr.astype(np.int32), "unsupported pixel type int32"),
        "gray_s16.tiff": (gray.astype(np.int16), "unsupported pixel type int16"),
        "f32_255.tiff": (gray.astype(np.float32), r"float image with values outside \[0, 1\]"),
        "bgr_f64_255.tiff": (bgr.astype(np.float64), r"float image with values outside \[0, 1\]"),
    }
    for name, (pixels, reason) in refused.items():
        assert cv2.imwrite(str(tmp_path / name), pixels), name
        with pytest.raises(ImageError, match=reason):
            load_image(tmp_path / name)
    nan = gray.astype(np.float32) / 255
    nan[5, 5] = np.nan
    with pytest.raises(ImageError, match="not finite"):
        to_gray_u8(nan)
    with pytest.raises(ImageError, match="unsupported pixel type bool"):
        to_gray_u8(np.zeros((4, 4, 3), bool))


def test_float_values_that_round_into_range_keep_their_pixels() -> None:
    # Only values that would need clipping are refused: a float pipeline's 1.0000001 is white.
    f = np.array([[-0.5 / 255 + 1e-6, 0.5, 1.0 + 0.49 / 255]], np.float64)
    assert to_gray_u8(f).tolist() == [[0, 128, 255]]


def test_long_thin_image_is_refused_instead_of_padded_to_a_huge_square(tmp_path: Path) -> None:
    # 1x60000 (a 140-byte PNG) would be padded to 60000x60000, 3.6 GB, before resizing.
    cv2.imwrite(str(tmp_path / "line.png"), np.full((1, 60000), 128, np.uint8))
    with pytest.raises(ImageError, match="60000x1 would be padded to 60000x60000"):
        load_image(tmp_path / "line.png")
    with pytest.raises(ImageError, match="over 100 MP"):
        to_model_input(np.zeros((3, 20000, 3), np.uint8))


def test_padded_square_limit_is_the_decode_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.vision import preprocess

    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 100 * 100)
    assert to_model_input(np.zeros((40, 100), np.uint8)).shape == (300, 300)
    with pytest.raises(ImageError, match="101x40"):
        to_model_input(np.zeros((40, 101), np.uint8))


def test_jpeg_with_bytes_after_its_end_marker_decodes_like_the_original(casting_data: Path, tmp_path: Path) -> None:
    src = next((casting_data / "test" / "ok_front").glob("*.jpeg"))
    data = src.read_bytes()
    ok, other = cv2.imencode(".jpg", part_image(5))
    trailers = {
        "zeros.jpeg": bytes(100),
        "vendor.jpeg": b"VENDOR" + bytes(range(94)),  # 100 bytes, no end-of-image marker in them
        "second.jpeg": other.tobytes()[: len(other) // 2],  # an appended, itself truncated, JPEG
    }
    for name, tail in trailers.items():
        (tmp_path / name).write_bytes(data + tail)
        assert np.array_equal(load_image(tmp_path / name), load_image(src)), name


def test_jpeg_cut_anywhere_is_refused_as_truncated(tmp_path: Path) -> None:
    gray = part_image(6)
    for progressive in (0, 1):
        ok, enc = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
        data = enc.tobytes()
        for cut in (len(data) // 4, len(data) // 2, len(data) - 40, len(data) - 3, len(data) - 1):
            (tmp_path / "cut.jpg").write_bytes(data[:cut])
            with pytest.raises(ImageError, match="truncated JPEG"):
                load_image(tmp_path / "cut.jpg")
        (tmp_path / "whole.jpg").write_bytes(data)
        assert load_image(tmp_path / "whole.jpg").shape == (300, 300)
