"""Continuous-mode tracking when the inspection loop skips camera frames (an overloaded box).

    .venv/bin/python bench/tracker_gaps.py [--data DIR] [--runs 200] [--seed 0]

The daemon always takes the newest frame, so a slow or starved loop sees a part in only
some of the frames it crosses. Renders the simulated line of tests/station/test_daemon.py (8
parts, 1280x720, 40 px/frame, rims 280 px, parts about 420 px apart), encodes and decodes
it as an MJPG video as the daemon would read it, locates the parts in every frame once,
then replays the tracker (with `due()`, as `inspect.predictive_crop` does) under random
frame-skip patterns and checks every hand-over against the rendered truth. Prints, per
pattern: runs with a part handed over twice, runs with a part missed, runs out of belt
order. Every frame inspected is the baseline: it must be clean. Then a loop that is steadily
too slow from the start, with the belt speed unknown and configured
(`inspect.belt_speed_px_per_frame`, exact and 10% off).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge.offline.dataset import default_data_root
from edge.vision.locate import LocateConfig, find_parts
from edge.vision.simulate import (
    DATASET_BACKDROP_LEVEL,
    DEMO_CONTEXT,
    SimulatedLine,
    write_video,
)
from edge.vision.tracker import PartTracker

# (share of frames after which the loop stalls, fewest and most frames skipped by a stall)
PATTERNS = [(0.0, 1, 1), (0.2, 2, 5), (0.2, 5, 14), (0.5, 2, 9), (0.5, 5, 9), (0.8, 2, 6)]
STEADY = (2, 3, 4, 6, 8, 10)  # a loop that inspects every k-th frame from the start


def _line(data: Path) -> tuple[list[np.ndarray], list[list[float]]]:
    files = [sorted((data / "test" / c).glob("*.jpeg")) for c in ("def_front", "ok_front")]
    if all(files):
        picks = [[f[i] for i in np.linspace(0, len(f) - 1, 4).astype(int)] for f in files]
        parts = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for pair in zip(*picks) for p in pair]
    else:
        print(f"dataset not found under {data}: synthetic parts")
        from tests.conftest import part_image

        parts = [part_image(i, defect=bool(i % 2)) for i in range(8)]
    labels = ["x"] * len(parts)
    sim = SimulatedLine(parts, labels, speed_px=40, diameter_px=280, diameter_jitter=0.08, y_jitter=50,
                        belt_level=DATASET_BACKDROP_LEVEL, context=DEMO_CONTEXT, seed=3)
    rendered = list(sim)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "line.avi"
        write_video(video, (frame for frame, _ in rendered), fps=25)
        cap = cv2.VideoCapture(str(video))
        frames = []
        while (got := cap.read())[0]:
            frames.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2GRAY))
    centres = [[p.cx for p in truth.parts] for _, truth in rendered]
    index = [[p.index for p in truth.parts] for _, truth in rendered]
    return frames, [list(zip(c, i)) for c, i in zip(centres, index)]


def _replay(frames: list[np.ndarray], boxes: list, truth: list, schedule: list[int], speed: float) -> list[int]:
    """The true part index of each hand-over, inspecting only the frames in `schedule`."""
    tracker, handed = PartTracker(0.5, predictive=True, expected_speed=speed), []
    for i in schedule:
        handed += tracker.due(i) + tracker.update(i, boxes[i], frames[i].shape[1])
    handed += tracker.flush()
    return [min(truth[t.frame_index], key=lambda c: abs(c[0] - t.box.cx))[1] for t in handed]


def _stalls(n_frames: int, p_stall: float, lo: int, hi: int, rng: np.random.Generator) -> list[int]:
    schedule, i = [], 0
    while i < n_frames:
        schedule.append(i)
        i += int(rng.integers(lo, hi + 1)) if rng.random() < p_stall else 1
    return schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data_root())
    ap.add_argument("--runs", type=int, default=200, help="random frame-skip schedules per pattern")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    frames, truth = _line(args.data)
    boxes = [find_parts(f, LocateConfig()) for f in frames]
    n_parts = 1 + max(i for t in truth for _, i in t)
    print(f"{len(frames)} frames, {n_parts} parts, {args.runs} schedules per pattern; runs with a part handed "
          "over twice / a part missed / parts out of belt order")
    print("stall share | frames skipped | frames inspected | belt speed learnt | configured (40 px/frame)")
    for p_stall, lo, hi in PATTERNS:
        cells, inspected = [], 0
        for speed in (0.0, 40.0):
            rng = np.random.default_rng(args.seed)  # the same schedules for both
            twice = missed = disorder = inspected = 0
            for _ in range(args.runs):
                schedule = _stalls(len(frames), p_stall, lo, hi, rng)
                inspected += len(schedule)
                ids = _replay(frames, boxes, truth, schedule, speed)
                twice += len(ids) != len(set(ids))
                missed += len(set(ids)) < n_parts
                disorder += ids != sorted(ids)
            cells.append(f"{twice:>3d} / {missed:>3d} / {disorder:>3d}")
        share = inspected / (args.runs * len(frames))
        print(f"{p_stall:11.1f} | {lo:>6d}..{hi:<7d} | {share:16.0%} | {cells[0]:>17s} | {cells[1]:>17s}")
    print("\nsteadily slow loop: every k-th frame from the start (40 px/frame, rim radius about 140 px),")
    print(f"runs (one per start offset) in which all {n_parts} parts were handed over once each, in belt order")
    print("every k-th | belt speed unknown | configured 40 | configured 36 (10% off) | configured 44 (10% off)")
    for k in STEADY:
        cells = []
        for speed in (0.0, 40.0, 36.0, 44.0):
            right = sum(_replay(frames, boxes, truth, list(range(offset, len(frames), k)), speed) == list(range(n_parts))
                        for offset in range(k))
            cells.append(f"{right}/{k}")
        print(f"{k:10d} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
