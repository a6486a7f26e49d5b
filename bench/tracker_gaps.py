"""Continuous-mode tracking when the inspection loop skips camera frames (an overloaded box).

    .venv/bin/python bench/tracker_gaps.py [--data DIR] [--runs 200] [--seed 0]

The daemon always takes the newest frame, so a slow or starved loop sees a part in only
some of the frames it crosses. Renders the simulated line of tests/test_daemon.py (8
parts, 1280x720, 40 px/frame, rims 280 px, parts about 420 px apart), encodes and decodes
it as an MJPG video as the daemon would read it, locates the parts in every frame once,
then replays the tracker (with `due()`, as `inspect.predictive_crop` does) under random
frame-skip patterns and checks every hand-over against the rendered truth. Prints, per
pattern: runs with a part handed over twice, runs with a part missed, runs out of belt
order. Every frame inspected is the baseline: it must be clean.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge.dataset import default_data_root
from edge.locate import LocateConfig, find_parts
from edge.simulate import DATASET_BACKDROP_LEVEL, DEMO_CONTEXT, SimulatedLine, write_video
from edge.tracker import PartTracker

# (share of frames after which the loop stalls, fewest and most frames skipped by a stall)
PATTERNS = [(0.0, 1, 1), (0.2, 2, 5), (0.2, 5, 14), (0.5, 2, 9), (0.5, 5, 9), (0.8, 2, 6)]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data_root())
    ap.add_argument("--runs", type=int, default=200, help="random frame-skip schedules per pattern")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    frames, truth = _line(args.data)
    boxes = [find_parts(f, LocateConfig()) for f in frames]
    n_parts = 1 + max(i for t in truth for _, i in t)
    print(f"{len(frames)} frames, {n_parts} parts, {args.runs} schedules per pattern")
    print("stall share | frames skipped | frames inspected | runs: part twice | part missed | out of order")
    for p_stall, lo, hi in PATTERNS:
        rng = np.random.default_rng(args.seed)
        twice = missed = disorder = inspected = 0
        for _ in range(args.runs):
            tracker, handed, i = PartTracker(0.5, predictive=True), [], 0
            while i < len(frames):
                inspected += 1
                handed += tracker.due(i) + tracker.update(i, boxes[i], frames[i].shape[1])
                i += int(rng.integers(lo, hi + 1)) if rng.random() < p_stall else 1
            handed += tracker.flush()
            ids = [min(truth[t.frame_index], key=lambda c: abs(c[0] - t.box.cx))[1] for t in handed]
            twice += len(ids) != len(set(ids))
            missed += len(set(ids)) < n_parts
            disorder += ids != sorted(ids)
        share = inspected / (args.runs * len(frames))
        print(f"{p_stall:11.1f} | {lo:>6d}..{hi:<7d} | {share:15.0%} | {twice:15d} | {missed:11d} | {disorder:12d}")


if __name__ == "__main__":
    main()
