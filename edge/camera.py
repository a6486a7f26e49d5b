"""Camera sources through OpenCV, behind a latest-frame grabber thread.

The grabber reads continuously and keeps only the newest frame, so a slow moment in
inspection never makes the daemon work through a stale backlog. It reconnects with
exponential backoff and reports a fault when frames stop coming or stop changing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.dataset import is_image_file
from edge.preprocess import ImageError, decode_bytes, to_gray_u8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    gray: np.ndarray  # uint8 (H, W)
    ts: float  # wall-clock capture time (time.time())
    mono: float  # monotonic capture time, for ages and latencies
    index: int  # frames delivered since start, across reconnects


class Source(Protocol):
    """One connection to a camera; `read` blocks for the next frame, None when it ends or fails.

    A source with a true `finite` attribute (a file or folder played once) has ended, not
    failed, when `read` returns None; without the attribute a source is taken to be endless.
    """

    name: str

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class SourceError(RuntimeError):
    pass


def is_url(s: str) -> bool:
    return s.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp")


@functools.cache
def _has_gstreamer() -> bool:
    """Whether this OpenCV can open GStreamer pipelines (the opencv-python wheels from PyPI cannot)."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "GStreamer":
            return value.strip().upper().startswith("YES")
    return False


V4L_SELECT_TIMEOUT_ENV = "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"


def _limit_v4l2_wait(read_timeout_s: float) -> None:
    """V4L2 takes no read-timeout parameter: how long it waits for a frame is this variable
    (whole seconds, 10 by default), read on the process's first V4L2 frame. Setting it from
    read_timeout_s makes a stalled USB camera fail over that time, not 10 s per read; an
    operator's own setting wins. Called from the constructor, before the grabber thread runs."""
    if V4L_SELECT_TIMEOUT_ENV not in os.environ:
        os.environ[V4L_SELECT_TIMEOUT_ENV] = str(max(1, math.ceil(read_timeout_s)))


class OpenCVSource:
    """V4L2 device, video file, stream URL or GStreamer pipeline via cv2.VideoCapture.

    backend forces an OpenCV API (a cv2.CAP_* constant) instead of the one the spec implies.
    """

    def __init__(self, spec: str | int, open_timeout_s: float = 5.0, read_timeout_s: float = 2.0,
                 loop: bool = False, fps: float | None = None, width: int | None = None,
                 height: int | None = None, backend: int | None = None) -> None:
        self.spec = spec
        self.backend = backend
        self.name = str(spec)
        self.loop, self.fps, self.width, self.height = loop, fps, width, height
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        self._cap: cv2.VideoCapture | None = None
        self._is_file = isinstance(spec, str) and Path(spec).is_file()
        self._next_t = 0.0
        self._timeouts_refused = False  # this backend opened only without the timeout parameters
        if self._backend_and_target()[0] == cv2.CAP_V4L2:
            _limit_v4l2_wait(read_timeout_s)

    @property
    def finite(self) -> bool:
        """A video file played once ends; a device or stream that stops has failed."""
        return self._is_file and not self.loop

    def _backend_and_target(self) -> tuple[int, str | int]:
        s = self.spec
        target: str | int = s
        if isinstance(s, int) or (isinstance(s, str) and s.isdigit()):
            backend, target = cv2.CAP_V4L2, int(s)
        elif s.startswith("/dev/video"):
            backend = cv2.CAP_V4L2
        elif "!" in s and "appsink" in s:
            backend = cv2.CAP_GSTREAMER
        elif is_url(s):
            backend = cv2.CAP_FFMPEG
        else:
            backend = cv2.CAP_ANY
        return (backend if self.backend is None else self.backend), target

    def open_attempts(self) -> list[list[int]]:
        """The open parameters to try, in order.

        Only some backends take parameters in open(); V4L2 and DSHOW (like CAP_IMAGES) refuse
        the call outright ("unsupported parameter"), so a device would never open with them.
        FFmpeg (streams) takes the timeouts and gets no retry without them, which would wait
        for a dead camera with no limit; any other backend falls back to none.
        """
        backend, _ = self._backend_and_target()
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
        if backend in (cv2.CAP_V4L2, cv2.CAP_DSHOW) or self._timeouts_refused:
            return [[]]
        if backend == cv2.CAP_FFMPEG:
            return [timeouts]
        return [timeouts, []]

    def _cannot_open(self) -> str:
        if isinstance(self.spec, str) and "!" in self.spec and not _has_gstreamer():
            return (f"camera {self.name}: cannot open: this OpenCV build has no GStreamer "
                    "(cv2.getBuildInformation()); a GStreamer pipeline needs an OpenCV built with GStreamer")
        return f"camera {self.name}: cannot open"

    def open(self) -> None:
        backend, target = self._backend_and_target()
        attempts = self.open_attempts()
        for i, params in enumerate(attempts):
            cap = cv2.VideoCapture(target, backend, params)
            if cap.isOpened():
                break
            cap.release()
        else:
            raise SourceError(self._cannot_open())
        if i > 0:  # opened only without the timeouts: remember, and say so once
            self._timeouts_refused = True
            log.info("camera opened without timeout parameters (its OpenCV backend refuses them)",
                     extra={"camera": self.name, "backend": cap.getBackendName()})
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self._is_file and self.fps is None:
            native = cap.get(cv2.CAP_PROP_FPS)
            self.fps = native if native and native > 0 else None
        self._cap = cap
        self._next_t = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, frame = self._cap.read()
        if not ok and self._is_file and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        if self._is_file and self.fps:  # a file plays at camera speed, not disk speed
            self._next_t = _pace(self._next_t, self.fps)
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _pace(next_t: float, fps: float) -> float:
    now = time.monotonic()
    if next_t > now:
        time.sleep(next_t - now)
    return max(next_t, now - 1.0 / fps) + 1.0 / fps


class FolderSource:
    """Images of a folder, in name order, as frames (bad files are skipped with a log line)."""

    def __init__(self, folder: Path, fps: float = 5.0, loop: bool = True) -> None:
        self.folder, self.fps, self.loop = folder, fps, loop
        self.name = str(folder)
        self._files: list[Path] = []
        self._it: Iterator[Path] = iter(())
        self._next_t = 0.0

    @property
    def finite(self) -> bool:
        """Played once (loop false), the folder ends after its last image."""
        return not self.loop

    def open(self) -> None:
        self._files = [p for p in sorted(self.folder.rglob("*")) if p.is_file() and is_image_file(p)]
        if not self._files:
            raise SourceError(f"camera {self.name}: folder holds no images")
        self._it = iter(self._files)
        self._next_t = time.monotonic()

    def read(self) -> np.ndarray | None:
        for _ in range(len(self._files) + 1):
            path = next(self._it, None)
            if path is None:
                if not self.loop:
                    return None
                self._it = iter(self._files)
                continue
            try:
                gray = to_gray_u8(decode_bytes(path.read_bytes()))
            except (OSError, ImageError) as exc:
                log.warning("skipping folder frame", extra={"path": str(path), "reason": str(exc)})
                continue
            self._next_t = _pace(self._next_t, self.fps)
            return gray
        return None

    def close(self) -> None:
        self._it = iter(())


class IterSource:
    """Frames from a Python iterator factory (the simulated line), paced at fps.

    Endless: an iterator that runs out is a connection that stopped, opened again with backoff.
    """

    finite = False

    def __init__(self, name: str, factory: Callable[[], Iterator[np.ndarray]], fps: float) -> None:
        self.name, self._factory, self.fps = name, factory, fps
        self._it: Iterator[np.ndarray] | None = None
        self._next_t = 0.0

    def open(self) -> None:
        self._it = self._factory()
        self._next_t = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._it is None:
            return None
        frame = next(self._it, None)
        if frame is not None:
            self._next_t = _pace(self._next_t, self.fps)
        return frame

    def close(self) -> None:
        self._it = None


# Clockwise turns applied to every frame (camera.rotate), so that parts cross the image
# along x, the axis the continuous-mode tracker follows.
ROTATIONS: dict[int, int | None] = {0: None, 90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180,
                                    270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def _digest(gray: np.ndarray) -> bytes:
    return hashlib.blake2b(gray[::8, ::8].tobytes(), digest_size=16).digest()


def _why(exc: BaseException) -> str:
    """An exception as one log-friendly line (cv2.error texts span several)."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, SourceError) else f"{type(exc).__name__}: {text}"


BAD_FRAME_LOG_EVERY_S = 60.0  # a camera sending only unusable frames logs once a minute, not per frame


class Camera:
    """Latest-frame grabber with reconnect/backoff, freshness watchdog and frozen detection."""

    def __init__(self, source: Source, stale_after_s: float = 0.5, frozen_after: int = 30,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, rotate: int = 0) -> None:
        if rotate not in ROTATIONS:
            raise ValueError(f"rotate must be one of {sorted(ROTATIONS)} degrees, got {rotate}")
        self.source = source
        self._rotation = ROTATIONS[rotate]
        self.stale_after_s, self.frozen_after = stale_after_s, frozen_after
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._index = 0
        self._last_digest = b""
        self._repeats = 0
        self.frames = 0  # frames captured
        self.consumed = 0  # frames handed to the inspection loop
        self.reconnects = 0
        self.bad_frames = 0  # frames skipped because they cannot be made 8-bit gray
        self._bad_logged = -math.inf
        self.connected = False
        self.ended = False  # the source ended and will not come back (file or folder played once)
        self._fps_t: list[float] = []

    # -- grabber thread ------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout=5)
        self._close_source()

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception as exc:  # noqa: BLE001 - a driver that fails to let go must not stop the reconnect
            log.warning("camera close failed", extra={"camera": self.source.name, "error": _why(exc)})

    def _run(self) -> None:
        """Open, read, reconnect with backoff, until stopped or a finite source ends.

        Nothing a source raises may end this thread: the daemon would go on pinging the
        watchdog with no frames and the camera still marked connected, i.e. stop silently.
        """
        delay = self.reconnect_min_s
        first = True
        while not self._stop.is_set():
            try:
                self.source.open()
            except Exception as exc:  # noqa: BLE001 - SourceError, or whatever a driver raises
                log.warning("camera open failed", extra={"camera": self.source.name, "error": _why(exc),
                                                         "retry_s": round(delay, 2)})
                self._close_source()
                self._stop.wait(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            if not first:
                self.reconnects += 1
            first = False
            self.connected = True
            log.info("camera open", extra={"camera": self.source.name})
            got_any = False
            error: str | None = None
            while not self._stop.is_set():
                try:
                    raw = self.source.read()
                except Exception as exc:  # noqa: BLE001 - any driver failure: reconnect, never die
                    error = _why(exc)
                    break
                if raw is None:
                    break
                try:
                    self._publish(raw)
                except ImageError as exc:  # one odd buffer: skip it, the next may be fine
                    self._skip_frame(raw, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - as for read: reconnect, never die
                    error = _why(exc)
                    break
                got_any = True
                delay = self.reconnect_min_s
            self.connected = False
            self._close_source()
            if self._stop.is_set():
                break
            if error is None and getattr(self.source, "finite", False):
                self._end()
                break
            if error is not None:
                log.warning("camera read failed; reconnecting",
                            extra={"camera": self.source.name, "error": error, "retry_s": round(delay, 2)})
            else:
                log.warning("camera stopped delivering; reconnecting",
                            extra={"camera": self.source.name, "retry_s": round(delay, 2), "had_frames": got_any})
            self._stop.wait(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    def _end(self) -> None:
        """A file or folder played once is over: say so, and wake the consumer so it stops waiting."""
        self.ended = True
        if self.frames:
            log.info("camera source ended", extra={"camera": self.source.name, "frames": self.frames})
        else:
            log.warning("camera source ended without delivering a frame", extra={"camera": self.source.name})
        with self._cond:
            self._cond.notify_all()

    def _skip_frame(self, raw: np.ndarray, exc: ImageError) -> None:
        self.bad_frames += 1
        now = time.monotonic()
        if now - self._bad_logged >= BAD_FRAME_LOG_EVERY_S:
            self._bad_logged = now
            log.warning("skipping camera frame that cannot be made 8-bit gray",
                        extra={"camera": self.source.name, "error": str(exc), "shape": str(raw.shape),
                               "dtype": str(raw.dtype), "skipped_total": self.bad_frames})

    def _publish(self, raw: np.ndarray) -> None:
        gray = raw if raw.ndim == 2 and raw.dtype == np.uint8 else to_gray_u8(raw)
        if self._rotation is not None:
            gray = cv2.rotate(gray, self._rotation)
        d = _digest(gray)
        self._repeats = self._repeats + 1 if d == self._last_digest else 0
        self._last_digest = d
        now = time.monotonic()
        with self._cond:
            self._index += 1
            self.frames += 1
            self._latest = Frame(gray, time.time(), now, self._index)
            self._fps_t = [t for t in self._fps_t if now - t < 2.0] + [now]
            self._cond.notify_all()

    # -- consumer side -------------------------------------------------------------
    def next_frame(self, after_index: int, timeout: float) -> Frame | None:
        """The newest frame with index > after_index, waiting up to timeout; None if none came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                f = self._latest
                if f is not None and f.index > after_index:
                    self.consumed += 1
                    return f
                if self.ended:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return None

    @property
    def latest(self) -> Frame | None:
        return self._latest

    def fault(self) -> str | None:
        """Why the camera cannot be trusted right now, or None."""
        f = self._latest
        if f is None:
            return "no_frame"
        if time.monotonic() - f.mono > self.stale_after_s:
            return "stale_frame"
        if self._repeats >= self.frozen_after - 1:
            return "frozen_frame"
        return None

    def fps(self) -> float:
        with self._cond:
            t = self._fps_t
            return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    @property
    def dropped(self) -> int:
        """Frames captured that inspection never saw (overwritten by a newer frame)."""
        return max(self.frames - self.consumed, 0)


def is_path_source(spec: str | int) -> bool:
    """Whether a `camera.source` names a video file or image folder, not 'sim', a device
    (index or /dev/...), a stream URL or a GStreamer pipeline (the config resolves such paths
    against its own folder; open_source checks they exist)."""
    if not isinstance(spec, str) or spec == "sim" or spec.isdigit():
        return False
    return not (spec.startswith("/dev/") or is_url(spec) or "://" in spec or "!" in spec)


def open_source(spec: str | int, *, loop: bool = True, fps: float | None = None, open_timeout_s: float = 5.0,
                read_timeout_s: float = 2.0, width: int | None = None, height: int | None = None) -> Source:
    """The adapter for a config `camera.source` (except 'sim', which the daemon builds)."""
    if isinstance(spec, str) and Path(spec).is_dir():
        return FolderSource(Path(spec), fps=fps or 5.0, loop=loop)
    if is_path_source(spec) and not Path(str(spec)).exists():
        raise SourceError(f"camera source {spec!r}: no such file or folder, and not a device, URL or "
                          "GStreamer pipeline")
    return OpenCVSource(spec, open_timeout_s, read_timeout_s, loop=loop, fps=fps, width=width, height=height)
