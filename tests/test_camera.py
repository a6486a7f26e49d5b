"""Camera adapters on real files written with OpenCV: latest frame, faults, reconnect."""

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import (
    Camera,
    FolderSource,
    IterSource,
    OpenCVSource,
    SourceError,
    open_source,
)


def write_video(path: Path, n: int, size: tuple[int, int] = (320, 240), fps: float = 100.0) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert w.isOpened()
    for i in range(n):
        frame = np.full((size[1], size[0], 3), 40, np.uint8)
        cv2.putText(frame, str(i), (20, 120), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 5)
        frame[:, :8] = i % 256  # a stripe that encodes the frame number
        w.write(frame)
    w.release()
    return path


def test_video_file_frames_arrive_in_order_and_the_source_ends(tmp_path: Path) -> None:
    cam = Camera(OpenCVSource(str(write_video(tmp_path / "v.avi", 30)), loop=False, fps=300))
    cam.start()
    seen, last = [], 0
    while True:
        f = cam.next_frame(last, 2.0)
        if f is None:
            break
        seen.append(f.index)
        last = f.index
        assert f.gray.ndim == 2 and f.gray.dtype == np.uint8
    cam.stop()
    assert cam.ended and cam.frames == 30
    assert seen == sorted(seen) and seen[-1] == 30


def test_a_slow_consumer_gets_the_latest_frame_not_a_backlog(tmp_path: Path) -> None:
    cam = Camera(OpenCVSource(str(write_video(tmp_path / "v.avi", 200)), loop=True, fps=200))
    cam.start()
    first = cam.next_frame(0, 2.0)
    time.sleep(0.3)  # inspection is busy; ~60 frames arrive meanwhile
    nxt = cam.next_frame(first.index, 2.0)
    cam.stop()
    assert nxt.index - first.index > 20  # skipped straight to the newest
    assert cam.dropped > 20


def test_stale_and_frozen_frames_are_faults() -> None:
    frozen = np.full((60, 80), 99, np.uint8)

    def forever():
        while True:
            yield frozen

    cam = Camera(IterSource("frozen", forever, fps=200), stale_after_s=0.2, frozen_after=10)
    cam.start()
    time.sleep(0.2)
    assert cam.fault() == "frozen_frame"
    cam.stop()

    def three():
        for i in range(3):
            yield np.full((60, 80), i * 50, np.uint8)

    cam = Camera(IterSource("short", three, fps=100), stale_after_s=0.2, reconnect_min_s=5)
    cam.start()
    assert cam.next_frame(0, 1.0) is not None
    time.sleep(0.5)
    assert cam.fault() == "stale_frame"
    cam.stop()


def test_reconnects_with_backoff_when_a_stream_stops() -> None:
    opened = []

    def burst():
        opened.append(time.monotonic())
        for i in range(2):
            yield np.full((60, 80), i, np.uint8)

    cam = Camera(IterSource("flaky", burst, fps=100), reconnect_min_s=0.05, reconnect_max_s=0.2)
    cam.start()
    time.sleep(0.6)
    cam.stop()
    assert cam.reconnects >= 2 and len(opened) >= 3
    gaps = np.diff(opened)
    assert gaps[1] >= gaps[0] * 0.9  # backoff does not shrink


def test_folder_source_skips_bad_files_and_loops(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((50, 50), i * 80, np.uint8))
    (tmp_path / "3.jpg").write_bytes(b"")
    src = FolderSource(tmp_path, fps=1000, loop=True)
    src.open()
    values = [int(src.read()[0, 0]) for _ in range(6)]
    assert values == [0, 80, 160, 0, 80, 160]


def test_unknown_sources_are_refused_with_the_name(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(str(tmp_path / "nope.mp4"))
    src = open_source(str(write_video(tmp_path / "x.avi", 2)))
    assert isinstance(src, OpenCVSource)
    assert isinstance(open_source(str(tmp_path)), FolderSource)


@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_frames_are_turned_as_configured(tmp_path: Path, rotate: int) -> None:
    """A camera mounted across the belt: every frame is turned before anyone sees it."""
    video = write_video(tmp_path / "v.avi", 5)
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    assert ok
    upright = cv2.cvtColor(first, cv2.COLOR_BGR2GRAY)
    cam = Camera(OpenCVSource(str(video), loop=False, fps=300), rotate=rotate)
    cam.start()
    frame = cam.next_frame(0, 2.0)
    cam.stop()
    assert frame is not None
    np.testing.assert_array_equal(frame.gray, np.rot90(upright, k=-rotate // 90))  # clockwise


def test_a_rotation_that_is_no_quarter_turn_is_refused() -> None:
    with pytest.raises(ValueError, match="rotate must be one of"):
        Camera(IterSource("none", lambda: iter([]), fps=10), rotate=45)
