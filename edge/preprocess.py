"""Image preprocessing shared by the trainer and the edge runtime.

Every pixel the model sees, in training, evaluation, replay and on the line, goes
through these functions, so trainer and edge see identical inputs. Pure functions of
their arguments; OpenCV only, never TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_IMAGE_PIXELS = 100_000_000  # refuse decompression bombs before they eat the box
# OpenCV reads this once, at its first decode: it then refuses larger images up front.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

IMAGE_SIZE = (300, 300)  # (height, width) of the model input
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageError(ValueError):
    """An image that cannot be turned into a model input; the message says why."""


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGR, BGRA; 8, 16-bit or float) to 8-bit grayscale."""
    if image is None or image.size == 0:
        raise ImageError("empty image")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            raise ImageError(f"unsupported channel count {channels}")
    elif image.ndim != 2:
        raise ImageError(f"unsupported image shape {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {image.dtype}")


def square_pad(gray: np.ndarray) -> np.ndarray:
    """Pad a non-square image to a square by replicating its borders.

    Padding rather than cropping or stretching keeps the whole part and its round shape.
    """
    h, w = gray.shape[:2]
    if h == w:
        return gray
    d = abs(h - w)
    a, b = d // 2, d - d // 2
    if h < w:
        return cv2.copyMakeBorder(gray, a, b, 0, 0, cv2.BORDER_REPLICATE)
    return cv2.copyMakeBorder(gray, 0, 0, a, b, cv2.BORDER_REPLICATE)


def to_model_input(image: np.ndarray, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """Decoded image of any size/mode -> uint8 (H, W) grayscale at the model size."""
    gray = square_pad(to_gray_u8(image))
    h, w = gray.shape
    if (h, w) == tuple(size):
        return gray
    interp = cv2.INTER_AREA if h > size[0] else cv2.INTER_LINEAR
    return cv2.resize(gray, (size[1], size[0]), interpolation=interp)


def decode_bytes(data: bytes) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) keeping depth and channels.

    JPEGs, always 8-bit, are decoded straight to grayscale by libjpeg (the luma plane,
    about twice as fast as colour + conversion; on the casting images the pixels are
    identical to BGR decoding then COLOR_BGR2GRAY). EXIF orientation is ignored for every
    format, as IMREAD_UNCHANGED does: the geometry never depends on a metadata tag.
    """
    if not data:
        raise ImageError("zero-byte file")
    buf = np.frombuffer(data, dtype=np.uint8)
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION if data[:2] == b"\xff\xd8" else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(buf, flags)
    except cv2.error:  # OpenCV raises for sizes over OPENCV_IO_MAX_IMAGE_PIXELS
        image = None
    if image is None:
        raise ImageError(
            f"not a decodable image (corrupt, truncated, not an image, or over {MAX_IMAGE_PIXELS // 10**6} MP)"
        )
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageError(f"image too large ({image.shape[1]}x{image.shape[0]})")
    return image


def load_image(path: str | Path, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """Read an image file and return the uint8 (H, W) model input; ImageError if not."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from exc
    if _is_truncated_jpeg(data):
        raise ImageError("truncated JPEG (no end-of-image marker)")
    return to_model_input(decode_bytes(data), size)


def _is_truncated_jpeg(data: bytes) -> bool:
    # libjpeg pads a truncated stream with grey and only warns; a cut-off part image
    # must not be scored as if it were whole.
    return data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]
