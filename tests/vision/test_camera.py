"""Camera adapters on real files written with OpenCV: latest frame, faults, reconnect."""

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.camera import Camera, FaultWatch
from edge.vision.sources import (
    DAMAGED_FAULT_S,
    V4L_SELECT_TIMEOUT_ENV,
    FolderSource,
    Frame,
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
    upright = []
    while (read := cap.read())[0]:
        upright.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2GRAY))
    assert len(upright) == 5
    cam = Camera(OpenCVSource(str(video), loop=False, fps=300), rotate=rotate)
    cam.start()
    frame = cam.next_frame(0, 2.0)
    cam.stop()
    assert frame is not None
    # Whichever frame was the latest when asked (a loaded machine skips some), turned clockwise.
    turned = [np.rot90(u, k=-rotate // 90) for u in upright]
    assert frame.gray.shape == turned[0].shape
    assert any(np.array_equal(frame.gray, t) for t in turned)


def test_a_rotation_that_is_no_quarter_turn_is_refused() -> None:
    with pytest.raises(ValueError, match="rotate must be one of"):
        Camera(IterSource("none", lambda: iter([]), fps=10), rotate=45)


def write_sequence(folder: Path, n: int) -> str:
    """An image sequence `img_00.png`... as OpenCV's CAP_IMAGES backend reads it."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), np.full((40, 60), 30 + i * 40, np.uint8))
    return str(folder / "img_%02d.png")


def drain(cam: Camera, limit_s: float = 3.0) -> list[Frame]:
    """Every frame until the camera ends or nothing comes for a while, at most limit_s."""
    out: list[Frame] = []
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        f = cam.next_frame(out[-1].index if out else 0, 0.5)
        if f is None:
            break
        out.append(f)
    return out


def test_a_backend_that_takes_no_open_parameters_still_opens(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """V4L2 (like CAP_IMAGES here) refuses the timeout open parameters; the camera must still open."""
    spec = write_sequence(tmp_path / "seq", 3)
    source = OpenCVSource(spec, backend=cv2.CAP_IMAGES)
    assert source.open_attempts()[0] != []  # tried with the timeouts first, as an unknown backend is
    cam = Camera(source)
    with caplog.at_level(logging.INFO, "edge.vision"):
        cam.start()
        first = cam.next_frame(0, 2.0)
        end = time.monotonic() + 2.0
        while cam.frames < 3 and time.monotonic() < end:
            time.sleep(0.01)
        cam.stop()
    assert first is not None and int(first.gray[0, 0]) in (30, 70, 110) and cam.frames >= 3
    rec = next(r for r in caplog.records if "without timeout parameters" in r.getMessage())
    assert vars(rec)["camera"] == spec and source.open_attempts() == [[]]  # not tried again on reconnect


def test_devices_are_opened_without_the_timeouts_v4l2_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(V4L_SELECT_TIMEOUT_ENV, "")
    monkeypatch.delenv(V4L_SELECT_TIMEOUT_ENV)  # restored to unset afterwards
    for spec in (0, "2", "/dev/video0"):
        assert OpenCVSource(spec, read_timeout_s=2.5).open_attempts() == [[]], spec
    assert os.environ[V4L_SELECT_TIMEOUT_ENV] == "3"  # V4L2's own wait, whole seconds, from read_timeout_s
    monkeypatch.setenv(V4L_SELECT_TIMEOUT_ENV, "7")
    OpenCVSource(0, read_timeout_s=1)
    assert os.environ[V4L_SELECT_TIMEOUT_ENV] == "7"  # the operator's setting wins
    stream = OpenCVSource("rtsp://cam.local/stream", open_timeout_s=3, read_timeout_s=1)
    assert stream.open_attempts() == [[cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 3000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 1000]]


@pytest.mark.skipif("GStreamer:                   YES" in cv2.getBuildInformation(),
                    reason="this OpenCV has GStreamer")
def test_a_gstreamer_pipeline_on_an_opencv_without_gstreamer_says_so() -> None:
    src = OpenCVSource("videotestsrc ! videoconvert ! appsink")
    with pytest.raises(SourceError, match="this OpenCV build has no GStreamer"):
        src.open()


def test_a_frame_that_cannot_be_made_gray_is_skipped_and_frames_keep_coming(
        caplog: pytest.LogCaptureFixture) -> None:
    def frames() -> Iterator[np.ndarray]:
        yield np.full((48, 64), 10, np.uint8)
        yield np.zeros((48, 64, 2), np.uint8)  # a YUYV buffer handed over unconverted
        for i in range(1, 1000):
            yield np.full((48, 64), i % 256, np.uint8)

    cam = Camera(IterSource("odd-buffer", frames, fps=200), reconnect_min_s=5)
    with caplog.at_level(logging.WARNING, "edge.vision"):
        cam.start()
        time.sleep(0.3)
        thread_alive = cam._thread is not None and cam._thread.is_alive()
        got = drain(cam, 0.3)
        cam.stop()
    assert thread_alive and cam.connected is False  # stopped by us, not by the bad frame
    assert got and cam.frames > 20 and cam.bad_frames == 1 and cam.reconnects == 0
    rec = next(r for r in caplog.records if "skipping camera frame" in r.getMessage())
    assert vars(rec)["camera"] == "odd-buffer" and "channel" in vars(rec)["error"]


def test_a_read_or_open_that_raises_reconnects_and_frames_keep_coming(
        caplog: pytest.LogCaptureFixture) -> None:
    opens: list[int] = []

    def frames(n: int) -> Iterator[np.ndarray]:
        if n == 2:
            yield np.full((48, 64), 1, np.uint8)
            raise cv2.error("driver hiccup")
        for i in range(1000):
            yield np.full((48, 64), i % 256, np.uint8)

    def connection() -> Iterator[np.ndarray]:  # open #1 fails, #2 breaks after a frame, #3 works
        opens.append(1)
        if len(opens) == 1:
            raise OSError("device busy")
        return frames(len(opens))

    cam = Camera(IterSource("flaky-driver", connection, fps=200), reconnect_min_s=0.05)
    with caplog.at_level(logging.WARNING, "edge.vision"):
        cam.start()
        time.sleep(0.6)
        alive = cam._thread is not None and cam._thread.is_alive()
        connected = cam.connected
        got = drain(cam, 0.3)
        cam.stop()
    assert alive and connected and len(opens) == 3 and cam.reconnects == 1
    assert got and cam.frames > 20
    msgs = [(r.getMessage(), vars(r).get("camera"), str(vars(r).get("error"))) for r in caplog.records]
    assert any("open failed" in m and c == "flaky-driver" and "device busy" in e for m, c, e in msgs)
    assert any("read failed" in m and c == "flaky-driver" and "driver hiccup" in e for m, c, e in msgs)


def test_a_folder_without_loop_plays_once_and_ends(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((50, 50), i * 80, np.uint8))
    # 10 fps: each image stays the latest frame for 100 ms, so a loaded machine's reader sees all three.
    cam = Camera(FolderSource(tmp_path, fps=10, loop=False), reconnect_min_s=0.05)
    cam.start()
    frames = drain(cam)
    cam.stop()
    assert [int(f.gray[0, 0]) for f in frames] == [0, 80, 160]
    assert cam.ended and cam.frames == 3 and cam.reconnects == 0


def damage(video: Path, first: int, last: int) -> Path:
    """Zero the JPEG headers of MJPG frames first..last in place: listed by the container,
    undecodable (OpenCV's read fails on them exactly as at the end of the file)."""
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    for k in range(first, last + 1):
        data[starts[k] + 2:starts[k] + 300] = bytes(298)
    video.write_bytes(bytes(data))
    return video


def stripe(frame: np.ndarray) -> int:
    """The frame number write_video drew (MJPG moves it by a grey level or two)."""
    return int(round(float(np.median(frame[:, :8]))))


@pytest.mark.parametrize("loop", [False, True])
def test_damaged_frames_of_a_video_file_are_skipped_not_taken_for_its_end(tmp_path: Path, loop: bool) -> None:
    video = damage(write_video(tmp_path / "v.avi", 40), 10, 19)
    src = OpenCVSource(str(video), loop=loop, fps=1000)
    src.open()
    got = []
    for _ in range(30 if not loop else 45):
        frame = src.read()
        if frame is None:
            break
        got.append(stripe(frame))
    end = src.read() if not loop else "looping"
    src.close()
    # Before, frame 10 ended the file (loop: false) or rewound it to 0 (loop: true), silently.
    assert [abs(a - b) <= 2 for a, b in zip(got, list(range(10)) + list(range(20, 40)))] == [True] * 30, got
    if not loop:
        assert end is None and src.damaged_frames == 10
    else:  # rewound at the real end only; the damage is skipped again on the next pass
        assert abs(got[30] - 0) <= 2 and abs(got[40] - 20) <= 2, got
        assert src.damaged_frames == 20


def test_a_camera_with_damaged_frames_reports_the_fault_for_a_while(tmp_path: Path) -> None:
    video = damage(write_video(tmp_path / "v.avi", 80, fps=50), 10, 14)
    cam = Camera(OpenCVSource(str(video), loop=False), stale_after_s=0.5)
    cam.start()
    faults = []
    deadline = time.monotonic() + 10
    while not cam.ended and time.monotonic() < deadline:
        faults.append(cam.fault())
        time.sleep(0.01)
    cam.stop()
    assert cam.damaged_frames == 5 and cam.frames == 75
    assert DAMAGED_FAULT_S < 1.3  # the good frames after the damage last 1.3 s at 50 fps
    assert "damaged_frames" in faults and faults[-1] is None, faults


def test_a_source_whose_reads_fail_is_one_fault_episode_begun_and_cleared(
        caplog: pytest.LogCaptureFixture) -> None:
    broken = threading.Event()

    def connection() -> Iterator[np.ndarray]:
        if broken.is_set():
            raise OSError("no signal")

        def frames() -> Iterator[np.ndarray]:
            for i in range(100_000):
                if broken.is_set():
                    raise cv2.error("read timed out")
                yield np.full((48, 64), i % 256, np.uint8)
        return frames()

    cam = Camera(IterSource("flaky", connection, fps=100), stale_after_s=0.2, reconnect_min_s=0.05,
                 reconnect_max_s=0.1)
    watch = FaultWatch(cam, "parts pass uninspected", clear_after_s=0.5)
    changes: list[str | None] = []
    watch.on_change = lambda: changes.append(watch.fault)
    with caplog.at_level(logging.INFO, "edge.vision"):
        cam.start()
        assert cam.next_frame(0, 2.0) is not None

        def run(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                watch.check()
                time.sleep(0.01)

        run(0.3)
        broken.set()
        run(1.0)  # some 100 checks and several reconnects with the fault in force
        during = dict(watch.status())
        broken.clear()
        run(1.2)
        cam.stop()
    begun = [r for r in caplog.records if r.getMessage().startswith("camera fault: ")]
    cleared = [r for r in caplog.records if r.getMessage() == "camera fault cleared"]
    assert len(begun) == 1 and begun[0].levelno == logging.WARNING, [r.getMessage() for r in begun]
    assert "stale_frame" in begun[0].getMessage() and "parts pass uninspected" in begun[0].getMessage()
    assert len(cleared) == 1 and cleared[0].levelno == logging.INFO and vars(cleared[0])["fault"] == "stale_frame"
    assert during["fault_episode"] == "stale_frame" and during["fault_since"]
    assert watch.fault is None and watch.episodes == {"stale_frame": 1} and changes == ["stale_frame", None]
