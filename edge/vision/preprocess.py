"""Image preprocessing shared by the trainer and the edge runtime.

Every pixel the model sees, in training, evaluation, replay and on the line, goes
through these functions, so trainer and edge see identical inputs. Pure functions of
their arguments; OpenCV only, never TensorFlow.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

MAX_IMAGE_PIXELS = 100_000_000  # refuse decompression bombs before they eat the box
# OpenCV reads this once, at its first decode: it then refuses larger images up front.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

IMAGE_SIZE = (300, 300)  # (height, width) of the model input
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
# Pixel types with a known scale; anything else is refused, never guessed.
_SUPPORTED_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.uint16, np.float32, np.float64))


class ImageError(ValueError):
    """An image that cannot be turned into a model input; the message says why."""


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGR, BGRA; 8, 16-bit or float) to 8-bit grayscale.

    Only 8-bit, 16-bit unsigned and float in [0, 1] have a known scale; anything else
    (signed integers, floats in 0..255) is refused rather than guessed, since a wrong
    guess turns a defect into a white, accepted part.
    """
    if image is None or image.size == 0:
        raise ImageError("empty image")
    if image.dtype not in _SUPPORTED_DTYPES:
        raise ImageError(f"unsupported pixel type {image.dtype} (8-bit, 16-bit unsigned or float in [0, 1] only)")
    if np.issubdtype(image.dtype, np.floating):
        _check_float_range(image)
        if image.dtype == np.float64 and image.ndim == 3 and image.shape[2] > 1:
            image = image.astype(np.float32)  # cvtColor has no 64-bit float path
    try:
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
    except cv2.error as exc:
        reason = _cv_reason(exc)
        raise ImageError(f"cannot convert {image.dtype} image of shape {image.shape} to gray ({reason})") from exc
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _check_float_range(image: np.ndarray) -> None:
    """Refuse floats that clipping would change: their scale (0..1 or 0..255?) is unknown."""
    lo, hi = image.min(), image.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageError("float image with values that are not finite (NaN or infinity)")
    # Same arithmetic as the conversion: accept exactly the values that round into 0..255.
    if np.rint(lo * 255.0) < 0 or np.rint(hi * 255.0) > 255:
        raise ImageError(
            f"float image with values outside [0, 1] (min {float(lo):g}, max {float(hi):g}): scale unknown"
        )


def _cv_reason(exc: cv2.error) -> str:
    """The one-line reason of an OpenCV error, without its source location."""
    text = " ".join(line.strip(" >") for line in str(getattr(exc, "err", "") or exc).splitlines()).strip()
    return text or type(exc).__name__


def square_pad(gray: np.ndarray) -> np.ndarray:
    """Pad a non-square image to a square by replicating its borders.

    Padding rather than cropping or stretching keeps the whole part and its round shape.
    The square must fit the same pixel limit as a decoded image: a tiny 1x60000 file
    would otherwise ask for gigabytes here.
    """
    h, w = gray.shape[:2]
    if h == w:
        return gray
    side = max(h, w)
    if side * side > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"image {w}x{h} would be padded to {side}x{side}, over {MAX_IMAGE_PIXELS / 1e6:g} MP "
            f"(longest side at most {math.isqrt(MAX_IMAGE_PIXELS)} px)"
        )
    d = abs(h - w)
    a, b = d // 2, d - d // 2
    if h < w:
        return cv2.copyMakeBorder(gray, a, b, 0, 0, cv2.BORDER_REPLICATE)
    return cv2.copyMakeBorder(gray, 0, 0, a, b, cv2.BORDER_REPLICATE)


def to_model_input(image: np.ndarray, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """Decoded image of any size/mode -> uint8 (H, W) grayscale at the model size."""
    gray = to_gray_u8(image)
    try:
        gray = square_pad(gray)
        h, w = gray.shape
        if (h, w) == tuple(size):
            return gray
        interp = cv2.INTER_AREA if h > size[0] else cv2.INTER_LINEAR
        return cv2.resize(gray, (size[1], size[0]), interpolation=interp)
    except cv2.error as exc:  # e.g. out of memory: a bad input, never a crash of the run
        raise ImageError(f"cannot resize {gray.shape[1]}x{gray.shape[0]} image ({_cv_reason(exc)})") from exc


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
    try:
        return to_model_input(decode_bytes(data), size)
    except cv2.error as exc:  # any OpenCV failure on a file is that file's fault, not the run's
        raise ImageError(f"cannot convert ({_cv_reason(exc)})") from exc
    except MemoryError as exc:
        raise ImageError("out of memory while decoding") from exc


def _is_truncated_jpeg(data: bytes) -> bool:
    """True for a JPEG that ends before its end-of-image marker.

    libjpeg pads a truncated stream with grey and only warns; a cut-off part image must
    not be scored as if it were whole. The marker is found by walking the segments, so
    bytes after it (padding, vendor data, an appended second image) are ignored and a
    thumbnail's marker inside a header segment does not count.
    """
    if data[:2] != b"\xff\xd8":
        return False
    end = _jpeg_end(data)
    if end is None:  # structure not understood: the old rule, a marker near the end
        return b"\xff\xd9" not in data[-64:]
    return end < 0


# After 0xFF in entropy-coded data: 0x00 is a stuffed byte, 0xD0-0xD7 a restart marker,
# 0xFF fill; any other byte starts the next marker.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length field


def _jpeg_end(data: bytes) -> int | None:
    """Offset just past the end-of-image marker, -1 if the data ends first, None if malformed."""
    pos, n = 2, len(data)
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 2 > n:
            return -1
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        pos += 2
        if marker == 0xD9:
            return pos
        if marker in _STANDALONE:
            continue
        if marker in (0x00, 0xD8):
            return None
        if pos + 2 > n:
            return -1
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            return None
        pos += length
        if pos > n:
            return -1
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            m = _NEXT_MARKER.search(data, pos)
            if m is None:
                return -1
            pos = m.start()
