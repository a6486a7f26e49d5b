"""Camera sources: the adapters that yield frames (OpenCV devices, files, streams and
GStreamer pipelines; image folders; in-memory iterators for the simulator and tests).

A new kind of camera (a vendor SDK, GenICam) is one more class with Source's three
methods here, and one more branch in open_source.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.vision.preprocess import ImageError, decode_bytes, is_image_file, to_gray_u8

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
# Undecodable frames of a video file skipped in one read at most (a container whose frame
# count is far off must not make a read spin); past it the file is taken to have ended.
MAX_DAMAGED_RUN = 10_000
# After a damaged frame the camera counts as faulty this long (fault() == "damaged_frames"),
# so that a single one is seen in the status and logged, not lost between two looks.
DAMAGED_FAULT_S = 1.0


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
        self.damaged_frames = 0  # frames a video file announces but that cannot be decoded (skipped)
        self.damaged_mono: float | None = None  # when the last one was skipped (Camera.fault)
        self._damaged_in_pass = 0  # since the file was opened or rewound
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
        self._damaged_in_pass = 0
        self._next_t = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, frame = self._read_past_damage()
        if not ok and self._is_file and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._damaged_in_pass = 0
            ok, frame = self._read_past_damage()
        if not ok or frame is None:
            return None
        if self._is_file and self.fps:  # a file plays at camera speed, not disk speed
            self._next_t = _pace(self._next_t, self.fps)
        return frame

    def _read_past_damage(self) -> tuple[bool, np.ndarray | None]:
        """The next frame; in a video file, undecodable frames are skipped and counted.

        OpenCV's read fails alike at a file's end and on a damaged frame inside it, so a
        damaged frame used to end the file (or, looping, rewind it): the daemon then played
        the good first part over and over, or stopped, without a word. A failed read is the
        end only once the container has no frame left that was not tried: its frame count
        less the frames decoded (CAP_PROP_POS_FRAMES counts only those) and those skipped.
        Skipped frames are not paced: they are gone, as dropped frames are.
        """
        cap = self._cap
        if cap is None:
            return False, None
        ok, frame = cap.read()
        if ok or not self._is_file:
            return ok, frame
        left = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) - int(cap.get(cv2.CAP_PROP_POS_FRAMES)) - self._damaged_in_pass
        skipped = 0
        while not ok and skipped < min(left, MAX_DAMAGED_RUN):
            skipped += 1
            ok, frame = cap.read()
        if skipped:
            self._damaged_in_pass += skipped
            self.damaged_frames += skipped
            self.damaged_mono = time.monotonic()
        return ok, frame

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
