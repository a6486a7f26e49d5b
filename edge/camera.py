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

from edge.contract import iso
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
        """Why the camera cannot be trusted right now, or None: no_frame (none yet),
        damaged_frames (one skipped in the last DAMAGED_FAULT_S), stale_frame (none for
        stale_after_s), frozen_frame (frozen_after identical frames in a row)."""
        f = self._latest
        if f is None:
            return "no_frame"
        damaged = getattr(self.source, "damaged_mono", None)
        if damaged is not None and time.monotonic() - damaged < DAMAGED_FAULT_S:
            return "damaged_frames"
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
    def damaged_frames(self) -> int:
        """Frames the source could not decode and skipped (a damaged video file)."""
        return int(getattr(self.source, "damaged_frames", 0))

    @property
    def dropped(self) -> int:
        """Frames captured that inspection never saw (overwritten by a newer frame)."""
        return max(self.frames - self.consumed, 0)


FAULT_CLEAR_S = 1.0  # a camera fault is over once the camera has been fine this long


class FaultWatch:
    """Camera.fault(), read on every pass of the inspection loop, as fault episodes.

    In trigger mode a faulty camera shows in every answer (fail-safe rejects naming the
    fault); in continuous mode it shows in nothing the line sees: no part is tracked, so
    none is decided. Both modes therefore log the same: one WARNING when a fault begins
    (saying what it means in this mode), one INFO when it has cleared for clear_after_s,
    so a fault that flickers is one episode, never a line per frame. A change of fault
    within an episode (frozen, then stale) is logged at most once per change_log_every_s.
    Episodes are counted by fault for the status and metrics; on_change (the retained
    status, published at once) is called whenever the fault in force changes.
    """

    def __init__(self, camera: Camera, consequence: str, clear_after_s: float = FAULT_CLEAR_S,
                 change_log_every_s: float = 60.0) -> None:
        self.camera = camera
        self.consequence = consequence
        self.clear_after_s, self.change_log_every_s = clear_after_s, change_log_every_s
        self.on_change: Callable[[], object] | None = None  # e.g. Publisher.publish_status
        self.fault: str | None = None  # the fault of the episode in force (the latest seen in it)
        self.episodes: dict[str, int] = {}  # faults begun (or changed to), by fault
        self._since: float | None = None  # monotonic start of the episode
        self._since_wall: float | None = None
        self._ok_since: float | None = None  # fine since, within an episode
        self._change_logged = -math.inf

    def explain(self, fault: str) -> str:
        cam = self.camera
        return {
            "no_frame": "no frame received yet",
            "stale_frame": f"no new frame for more than camera.stale_after_s ({cam.stale_after_s:g} s)",
            "frozen_frame": f"the last {cam.frozen_after} frames are identical (camera.frozen_after): "
                            "a hung capture pipeline",
            "damaged_frames": "frames that cannot be decoded are being skipped",
        }.get(fault, fault)

    def check(self) -> str | None:
        """Read the camera's fault, log a begin, change or end of an episode; the fault in force."""
        now = time.monotonic()
        seen = self.camera.fault()
        cam = self.camera
        ctx = {"camera": cam.source.name, "frames": cam.frames, "reconnects": cam.reconnects,
               "damaged_frames": cam.damaged_frames, "connected": cam.connected}
        if seen is None:
            if self.fault is not None:
                self._ok_since = self._ok_since if self._ok_since is not None else now
                if now - self._ok_since >= self.clear_after_s:
                    log.info("camera fault cleared", extra={"fault": self.fault, **ctx,
                             "lasted_s": round(self._ok_since - (self._since or self._ok_since), 2)})
                    self.fault = self._since = self._since_wall = self._ok_since = None
                    self._changed()
            return self.fault
        self._ok_since = None
        if self.fault is None:
            self.fault, self._since, self._since_wall = seen, now, time.time()
            self.episodes[seen] = self.episodes.get(seen, 0) + 1
            log.warning(f"camera fault: {seen}: {self.explain(seen)}; {self.consequence}",
                        extra={"fault": seen, **ctx})
            self._changed()
        elif seen != self.fault:
            was, self.fault = self.fault, seen
            self.episodes[seen] = self.episodes.get(seen, 0) + 1
            if now - self._change_logged >= self.change_log_every_s:
                self._change_logged = now
                log.warning(f"camera fault is now {seen} (was {was}): {self.explain(seen)}",
                            extra={"fault": seen, "was": was, **ctx})
            self._changed()
        return self.fault

    def _changed(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:  # noqa: BLE001 - a failed status publish must not stop inspection
            log.exception("publishing the camera fault change failed")

    def status(self) -> dict[str, object]:
        """For the daemon's status: the episode in force (since when) and the episodes so far."""
        since = iso(self._since_wall) if self._since_wall is not None else None
        return {"fault_episode": self.fault, "fault_since": since, "fault_episodes": dict(self.episodes),
                "damaged_frames": self.camera.damaged_frames}


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
