"""Camera faults in continuous mode, on the real daemon (subprocess), real Mosquitto and
video files written here with OpenCV: a frozen camera and a video file with damaged
frames must be as loud as in trigger mode (status, metric, one WARNING when the fault
begins and one INFO when it clears), where before they made 0-1 decisions silently."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from broker import Mosquitto, free_port
from conftest_mqtt import Collector, mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, write_config

from edge.delivery.contract import Topics
from edge.vision.simulate import (
    DATASET_BACKDROP_LEVEL,
    DEMO_CONTEXT,
    SimulatedLine,
    synthetic_part,
    write_video,
)

FPS = 25


@pytest.fixture(autouse=True)
def need_bundle() -> None:
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")


def belt_frames(n_parts: int = 4) -> list[np.ndarray]:
    """Drawn parts passing a 1280x720 camera, 40 px per frame (no dataset needed)."""
    parts = [synthetic_part(i, defect=i % 2 == 0) for i in range(n_parts)]
    sim = SimulatedLine(parts, [None] * n_parts, speed_px=40, diameter_px=280, belt_level=DATASET_BACKDROP_LEVEL,
                        context=DEMO_CONTEXT, seed=3)
    return [frame for frame, _truth in sim]


def damage_frames(video: Path, first: int, last: int) -> None:
    """Zero the JPEG headers of MJPG frames first..last (inclusive) in place: the container
    still lists them, the decoder cannot decode them (OpenCV's read fails, as at the end)."""
    data = bytearray(video.read_bytes())
    starts = [m.start() for m in re.finditer(b"\xff\xd8\xff", bytes(data))]
    for k in range(first, last + 1):
        data[starts[k] + 2:starts[k] + 600] = bytes(598)
    video.write_bytes(bytes(data))


def camera_status(sub: Collector, t: Topics) -> list[dict]:
    return [m.json.get("camera", {}) for m in sub.on(t.status) if m.json.get("state") == "online"]


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def fault_lines(out: str) -> tuple[list[str], list[str]]:
    begun = [line for line in out.splitlines() if " WARNING " in line and "camera fault: " in line]
    cleared = [line for line in out.splitlines() if " INFO " in line and "camera fault cleared" in line]
    return begun, cleared


def test_a_frozen_camera_is_a_loud_fault_in_continuous_mode(mosquitto: Mosquitto,  # noqa: F811
                                                             tmp_path: Path) -> None:
    frames = belt_frames()
    # Moving, then the same frame for 4 s (a hung capture pipeline), then moving again.
    clip = frames[:40] + [frames[40]] * (4 * FPS) + frames[41:80]
    video = tmp_path / "frozen.avi"
    write_video(video, clip, fps=FPS)
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    mport = free_port()
    cfg = write_config(tmp_path, mosquitto.port, prefix, video, camera={"loop": False, "frozen_after": 10},
                       audit={"dir": None}, service={"metrics_listen": f"127.0.0.1:{mport}"})
    sub = Collector(mosquitto.port, [t.status])
    try:
        with DaemonProcess(cfg) as proc:
            # Published when the fault begins, not at the next status interval (10 s).
            assert sub.wait(lambda ms: any(c.get("fault_episode") == "frozen_frame"
                                           for c in camera_status(sub, t)), 30), proc.out
            during = scrape(mport)
            out = proc.join()
        assert sub.wait(lambda ms: any(c.get("fault_episode") is None and c.get("fault_episodes")
                                       for c in camera_status(sub, t)), 10)
    finally:
        sub.close()
    assert proc.returncode == 0, out[-3000:]
    cam = next(c for c in camera_status(sub, t) if c.get("fault_episode") == "frozen_frame")
    assert cam["fault"] == "frozen_frame" and cam["fault_since"].endswith("Z"), cam
    assert metric(during, 'edge_camera_fault{fault="frozen_frame"}') == 1.0, during
    assert metric(during, 'edge_camera_fault_episodes_total{fault="frozen_frame"}') == 1.0, during
    # One WARNING when it began, one INFO when it cleared: not one per frozen frame.
    begun, cleared = fault_lines(out)
    assert len(begun) == 1 and "frozen_frame" in begun[0] and "not inspected" in begun[0], out[-3000:]
    assert len(cleared) == 1 and "fault=frozen_frame" in cleared[0], out[-3000:]


def test_a_video_with_damaged_frames_is_played_past_them_and_reported(mosquitto: Mosquitto,  # noqa: F811
                                                                       tmp_path: Path) -> None:
    frames = belt_frames(8)  # 3 s of good frames after the damage: the fault clears (1 s + FAULT_CLEAR_S)
    video = tmp_path / "damaged.avi"
    write_video(video, frames, fps=FPS)
    damage_frames(video, 30, 44)
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    cfg = write_config(tmp_path, mosquitto.port, prefix, video, camera={"loop": False}, audit={"dir": None})
    sub = Collector(mosquitto.port, [t.status, t.decision])
    try:
        with DaemonProcess(cfg) as proc:
            out = proc.join()
        assert sub.wait(lambda ms: any(c.get("fault_episode") == "damaged_frames" for c in camera_status(sub, t)),
                        10), out[-3000:]
    finally:
        sub.close()
    assert proc.returncode == 0, out[-3000:]
    # Before, the first damaged frame ended the file: 30 frames, and the parts after it never came.
    ended = re.search(r"camera source ended camera=\S+ frames=(\d+)", out)
    assert ended and int(ended.group(1)) == len(frames) - 15, out[-3000:]
    begun, cleared = fault_lines(out)
    assert len(begun) == 1 and "damaged_frames" in begun[0] and "damaged_frames=15" in begun[0], out[-3000:]
    assert len(cleared) == 1 and "fault=damaged_frames" in cleared[0], out[-3000:]
    cam = next(c for c in camera_status(sub, t) if c.get("fault_episode") == "damaged_frames")
    assert cam["damaged_frames"] == 15 and cam["fault_episodes"] == {"damaged_frames": 1}, cam
    assert len(sub.on(t.decision)) >= 3, "parts after the damaged frames must still be decided"
