"""A camera source (edge.vision.sources) behind a latest-frame grabber thread.

The grabber reads continuously and keeps only the newest frame, so a slow moment in
inspection never makes the daemon work through a stale backlog. It reconnects with
exponential backoff and reports a fault when frames stop coming or stop changing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from edge.timestamps import iso
from edge.vision.preprocess import ImageError, to_gray_u8
from edge.vision.sources import DAMAGED_FAULT_S, Frame, Source, SourceError

log = logging.getLogger(__name__)

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
