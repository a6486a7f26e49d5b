"""PartTracker: each part on a moving line is handed over exactly once, at its best frame.

Unit tests feed hand-made detections; integration tests run a SimulatedLine (synthetic
parts always, dataset parts when present) through find_parts and the tracker, live and
through a video file written and read back with OpenCV.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.locate import PartBox, find_parts
from edge.vision.simulate import FrameTruth, SimulatedLine, synthetic_part, write_video
from edge.vision.tracker import PartTracker, Track
from tests.conftest import part_image

W = 1000  # frame width of the unit tests
R = 100.0


def box(cx: float, cy: float = 300.0, r: float = R, w: int = W) -> PartBox:
    return PartBox(cx, cy, r, 1.0, cx - r >= 0 and cx + r <= w - 1)


def run(tracker: PartTracker, frames: list[list[PartBox]]) -> list[Track]:
    out: list[Track] = []
    for i, boxes in enumerate(frames):
        out += tracker.update(i, boxes, payload=i)
    return out + tracker.flush()


def test_one_part_is_emitted_once_on_the_frame_nearest_the_line() -> None:
    xs = [-50, 30, 110, 190, 270, 350, 430, 510, 590, 670, 750, 830, 910, 990]  # line at 500
    frames = [[box(x)] for x in xs]
    tr = PartTracker(0.5, frame_width=W)
    emitted = []
    for i, boxes in enumerate(frames):
        got = tr.update(i, boxes, payload=f"frame{i}")
        emitted += [(i, t) for t in got]
    assert len(emitted) == 1 and tr.flush() == []
    when, t = emitted[0]
    assert when == xs.index(510)  # emitted as soon as the centre has crossed the line
    assert t.frame_index == xs.index(510) and t.box.cx == 510 and t.payload == "frame7"
    assert t.reason == "crossed" and t.box.fully_in_view and t.hits == 8


def test_the_best_frame_may_precede_the_crossing() -> None:
    tr = PartTracker(0.5, frame_width=W)
    out = run(tr, [[box(x)] for x in (300, 490, 560, 700)])
    assert [(t.frame_index, t.box.cx) for t in out] == [(1, 490)]


def test_a_part_missing_for_a_few_frames_keeps_its_track() -> None:
    frames = [[box(x)] for x in (200, 260, 320)] + [[], []] + [[box(x)] for x in (500, 560, 620)]
    out = run(PartTracker(0.5, frame_width=W, max_missing=3), frames)
    assert len(out) == 1 and out[0].box.cx == 500 and out[0].hits == 4  # hits so far


def test_a_part_missed_for_longer_is_picked_up_again_and_never_emitted_twice() -> None:
    xs = [100 + 60 * i for i in range(14)]
    frames = [[box(x)] for x in xs]
    for i in (4, 5, 6, 7, 8, 9):  # missed around the line, for longer than max_missing
        frames[i] = []
    out = run(PartTracker(0.5, frame_width=W, max_missing=2, max_coast=10), frames)
    # re-acquired at its predicted position by the same track: one emission, on the
    # fully-in-view frame nearest the line (700 is nearer 500 than 280)
    assert [(t.track_id, t.frame_index, t.box.cx, t.reason) for t in out] == [(0, 10, 700, "crossed")]


def test_a_track_lost_beyond_max_coast_is_closed_and_emitted_at_exit() -> None:
    frames = [[box(x)] for x in (200, 260, 320)] + [[]] * 6
    out = run(PartTracker(0.5, frame_width=W, max_missing=2, max_coast=4), frames)
    assert [(t.frame_index, t.box.cx, t.reason) for t in out] == [(2, 320, "exit")]


def test_part_crossing_while_cut_by_the_frame_uses_its_first_full_view() -> None:
    # line at 5% of the width: the centre crosses it while the part is still entering
    tr = PartTracker(0.05, frame_width=W)
    out = run(tr, [[box(x)] for x in (20, 60, 100, 140, 180)])
    assert [(t.frame_index, t.box.cx, t.reason) for t in out] == [(2, 100, "crossed")]


def test_part_that_is_never_fully_in_view_is_handed_over_as_unseen_never_for_judging() -> None:
    out = run(PartTracker(0.5, frame_width=W), [[box(x, r=600)] for x in range(0, 1000, 100)])
    # owed a (fault) answer, reported with its crossing frame
    assert [(t.reason, t.frame_index, t.payload, t.box.cx) for t in out] == [("unseen", 5, 5, 500)]


def test_an_unseen_part_ahead_is_handed_over_before_the_part_behind_it() -> None:
    # part A rides the top edge (cut: never fully in view), part B follows mid-belt
    def a(x: float) -> PartBox:
        return PartBox(x, 20.0, R, 1.0, False)

    frames = [[a(100 + 60 * i)] + ([box(60 * (i - 6))] if i >= 8 else []) for i in range(16)]
    out = run(PartTracker(0.5, frame_width=W), frames)
    assert [(t.track_id, t.reason) for t in out] == [(0, "unseen"), (1, "nearest")]  # A before B, not at its exit
    assert out[0].frame_index == 7  # where A crossed the line (cx 520)
    # Predictive hand-over (the daemon's default) must not let B jump ahead of A's fault either.
    tracker, got = PartTracker(0.5, frame_width=W, predictive=True), []
    for i, boxes in enumerate(frames):
        got += tracker.due(i) + tracker.update(i, boxes, payload=i)
    got += tracker.flush()
    assert [(t.track_id, t.reason) for t in got][:2] == [(0, "unseen"), (1, "crossed")]


def test_a_feature_seen_twice_at_the_edge_is_not_an_unseen_part() -> None:
    out = run(PartTracker(0.5, frame_width=W), [[PartBox(x, 20.0, R, 1.0, False)] for x in (480, 540)] + [[]] * 12)
    assert out == []


def test_part_leaving_before_the_line_is_emitted_at_exit_if_ever_fully_in_view() -> None:
    # moving right to left, line at 10%: the part turns off the belt before reaching it
    tr = PartTracker(0.1, frame_width=W, direction=-1, max_missing=2, max_coast=3)
    frames = [[box(x)] for x in (850, 780, 700)] + [[]] * 4
    out = run(tr, frames)
    assert [(t.frame_index, t.box.cx, t.reason) for t in out] == [(2, 700, "exit")]


def test_stream_end_flushes_pending_parts() -> None:
    tr = PartTracker(0.9, frame_width=W)
    out = run(tr, [[box(x)] for x in (200, 300, 400)])
    assert [(t.frame_index, t.box.cx, t.reason) for t in out] == [(2, 400, "flush")]


def test_fast_belt_needs_the_expected_speed_for_the_first_match() -> None:
    frames = [[box(x)] for x in (150, 300, 450, 600, 750)]  # 150 px/frame, radius 100
    assert len(run(PartTracker(0.5, frame_width=W), frames)) == 0  # never matched: 5 one-hit tracks
    out = run(PartTracker(0.5, frame_width=W, expected_speed=150), frames)
    assert [(t.frame_index, t.box.cx, t.hits, t.reason) for t in out] == [(2, 450, 3, "nearest")]  # no wait


def test_single_frame_false_detection_is_not_emitted() -> None:
    frames = [[], [box(600)], [], [], [], [], []]
    assert run(PartTracker(0.5, frame_width=W), frames) == []


def test_two_parts_in_one_frame_are_kept_apart_and_emitted_in_order() -> None:
    frames = [[box(x), box(x - 400)] for x in range(300, 1300, 60)]
    frames = [[b for b in f if b.cx + b.radius > 0 and b.cx - b.radius < W] for f in frames]
    out = run(PartTracker(0.5, frame_width=W), frames)
    assert [t.track_id for t in out] == sorted(t.track_id for t in out)
    assert len(out) == 2 and [abs(t.box.cx - 500) <= 30 for t in out] == [True, True]
    assert out[0].frame_index < out[1].frame_index


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        PartTracker(1.5)
    with pytest.raises(ValueError):
        PartTracker(0.5).update(0, [])  # frame width unknown
    tr = PartTracker(0.5)
    tr.update(3, [], W)  # the frame width may come with the first frame
    with pytest.raises(ValueError):
        tr.update(3, [])


# --- a whole simulated line ---------------------------------------------------------------


def track_line(frames, width: int) -> list[tuple[Track, int]]:
    """(track, frame index) for every emitted part, frames as (index, image) pairs."""
    tracker = PartTracker(0.5, frame_width=width)
    out = []
    for i, img in frames:
        out += tracker.update(i, find_parts(img))
    return out + tracker.flush()


def check_line(emitted: list[Track], truths: dict[int, FrameTruth], labels: list[str]) -> None:
    matched = []
    for t in emitted:
        parts = truths[t.frame_index].parts
        p = min(parts, key=lambda q: np.hypot(q.cx - t.box.cx, q.cy - t.box.cy))
        assert np.hypot(p.cx - t.box.cx, p.cy - t.box.cy) <= 0.05 * p.diameter
        assert p.fully_in_view and t.box.fully_in_view
        matched.append((p.index, p.label))
    assert [i for i, _ in matched] == list(range(len(labels)))  # each part once, in order
    assert [lab for _, lab in matched] == labels


def test_synthetic_line_yields_each_part_once_in_order() -> None:
    labels = ["ok_front", "def_front", "ok_front", "def_front"]
    parts = [part_image(i, defect=lab == "def_front") for i, lab in enumerate(labels)]
    line = SimulatedLine(
        parts, labels, width=960, height=540, diameter_px=220, diameter_jitter=0.1, y_jitter=30, speed_px=35, seed=1
    )
    truths = {}

    def frames():
        for img, truth in line:
            truths[truth.frame_index] = truth
            yield truth.frame_index, img

    emitted = track_line(frames(), 960)
    check_line(emitted, truths, labels)
    assert all(t.reason in ("nearest", "crossed") for t in emitted)  # handed over in passing, not at exit


def test_simulated_line_is_deterministic() -> None:
    parts = [part_image(0), part_image(1, defect=True)]
    a = SimulatedLine(parts, ["ok_front", "def_front"], width=640, height=360, diameter_px=200, seed=4)
    b = SimulatedLine(parts, ["ok_front", "def_front"], width=640, height=360, diameter_px=200, seed=4)
    assert len(a) == len(b) > 0
    k = len(a) // 2
    fa, ta = a.render(k)
    fb, tb = b.render(k)
    np.testing.assert_array_equal(fa, fb)
    assert ta == tb
    # every part is fully in view in some frame and gone at the end
    seen_full = {p.index for i in range(len(a)) for p in a.truth(i).parts if p.fully_in_view}
    assert seen_full == {0, 1} and a.truth(len(a) - 1).parts == ()


@pytest.fixture(scope="module")
def synthetic_line() -> tuple[SimulatedLine, list[str]]:
    labels = ["def_front", "ok_front", "def_front"]
    parts = [synthetic_part(10 + i, defect=lab == "def_front") for i, lab in enumerate(labels)]
    line = SimulatedLine(parts, labels, width=960, height=540, diameter_px=200, y_jitter=20, speed_px=40, seed=5)
    return line, labels


@pytest.fixture(scope="module")
def dataset_line(casting_data: Path) -> tuple[SimulatedLine, list[str]]:
    rng = np.random.default_rng(3)
    labels = ["def_front", "ok_front", "ok_front", "def_front", "ok_front"]
    files = {c: sorted((casting_data / "test" / c).glob("*.jpeg")) for c in ("def_front", "ok_front")}
    parts = [cv2.imread(str(rng.choice(files[c])), cv2.IMREAD_GRAYSCALE) for c in labels]
    line = SimulatedLine(parts, labels, diameter_px=300, diameter_jitter=0.1, y_jitter=40, speed_px=45, seed=2)
    return line, labels


def test_dataset_line_yields_each_part_once_in_order(dataset_line) -> None:
    line, labels = dataset_line
    truths = {}

    def frames():
        for img, truth in line:
            truths[truth.frame_index] = truth
            yield truth.frame_index, img

    check_line(track_line(frames(), line.width), truths, labels)


@pytest.mark.parametrize(
    "which, suffix", [("synthetic_line", ".avi"), ("synthetic_line", ".mp4"), ("dataset_line", ".avi")]
)
def test_line_through_a_video_file_gives_the_same_parts(which: str, suffix: str, request, tmp_path: Path) -> None:
    line, labels = request.getfixturevalue(which)
    truths = {k: line.truth(k) for k in range(len(line))}
    path = tmp_path / f"line{suffix}"
    assert write_video(path, (img for img, _ in line), line.fps) == len(line)
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (line.width, line.height)

    def frames():
        i = 0
        while True:
            ok, img = cap.read()
            if not ok:
                break
            yield i, cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            i += 1

    try:
        emitted = track_line(frames(), line.width)
        n_read = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
    finally:
        cap.release()
    assert n_read == len(line)
    check_line(emitted, truths, labels)


def test_write_video_refuses_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mkv", [np.zeros((8, 8), np.uint8)], 10)


def test_handed_over_on_the_nearest_frame_without_waiting_for_the_next() -> None:
    """At a steady speed the frame nearest the line is known when it arrives: no frame of latency."""
    tr = PartTracker(0.5, frame_width=W)  # line at x = 500
    xs = [180, 260, 340, 420, 480, 560, 640]
    when = [(i, t.frame_index, t.box.cx, t.reason) for i, x in enumerate(xs) for t in tr.update(i, [box(x)])]
    assert when == [(4, 4, 480, "nearest")]
    assert tr.flush() == []


def test_a_detection_gap_at_the_line_hands_over_the_fresh_view_not_an_old_frame() -> None:
    """Missed near the line for several frames: judging the last frame before the gap would
    make the gate wait that many frames; the fresh view just past the line is used."""
    tr = PartTracker(0.5, frame_width=W)  # line at x = 500
    frames = [[box(x)] for x in (200, 260, 320, 380, 440)] + [[]] * 5 + [[box(740)]]
    out = run(tr, frames)
    assert [(t.frame_index, t.box.cx) for t in out] == [(10, 740)]


def test_a_steady_part_is_due_by_prediction_before_its_nearest_frame_is_searched() -> None:
    tr = PartTracker(0.5, frame_width=W)  # line at x = 500
    seen = [180, 260, 340, 420]  # 80 px per frame: 500 is next
    for i, x in enumerate(seen):
        assert tr.due(i) == [] and tr.update(i, [box(x)]) == []
    due = tr.due(4)
    assert [(t.frame_index, round(t.box.cx), t.reason, t.box.fully_in_view) for t in due] == [(4, 500, "predicted", True)]
    # The frame's own detections then update the track but never hand the part over again.
    assert tr.update(4, [box(498)]) == [] and tr.update(5, [box(578)]) == [] and tr.flush() == []


def test_no_prediction_without_a_steady_track() -> None:
    tr = PartTracker(0.5, frame_width=W)  # line at x = 500
    tr.update(0, [box(420)])
    tr.update(1, [box(460)])
    assert tr.due(2) == []  # two sightings: velocity not trusted yet (500 would be due)
    tr = PartTracker(0.5, frame_width=W)
    for i, x in enumerate((380, 420, 460)):
        tr.update(i, [box(x)])
    assert tr.due(5) == []  # not seen for more than max_lag frames: the gap may hide anything
    assert [t.frame_index for t in tr.due(3)] == [3]  # ... while the next frame is due


def test_predictive_tracker_hands_jittery_parts_over_once_by_prediction() -> None:
    """Locator centres jitter by a few px: in predictive mode every part still goes out exactly
    once, on a prediction (not one frame late on an observation)."""
    rng = np.random.default_rng(0)
    reasons = []
    for trial in range(50):
        tr = PartTracker(0.5, frame_width=W, predictive=True)
        start = rng.uniform(150, 190)
        out = []
        for k in range(40):
            x = start + 12 * k + rng.uniform(-4, 4)
            out += tr.due(k)
            out += tr.update(k, [box(x)] if x + R < W else [])
        out += tr.flush()
        assert len(out) == 1, (trial, [(t.reason, t.frame_index) for t in out])  # exactly once, always
        assert abs(out[0].box.cx - 500) <= 12 + 4, out[0].box.cx  # within a step (+ jitter) of the line
        reasons.append(out[0].reason)
    assert reasons.count("predicted") >= 45, reasons  # the rest: on the observed crossing frame


def test_skipped_frames_never_split_merge_or_reorder_parts() -> None:
    """An overloaded box inspects only some frames: each part must still be handed over
    once, in belt order. Seen once and then far away, a part must not be taken for the
    next one upstream (parts never move backwards, and tracks learn the belt's speed)."""
    speed, spacing, n_parts = 40, 350, 6

    def part_x(k: int, i: int) -> float:
        return 40.0 * i - spacing * k - R

    frames_seen = [0, 1, 2, 3, 10, 19, 23, 31, 32, 40, 41, 49, 50, 52, 57, 66, 69, 70, 75, 76, 77, 78, 79, 84,
                   88, 89, 98, 99, 100, 101, 102, 109, 110, 118, 119, 127]
    tracker = PartTracker(0.5, frame_width=W)
    out: list[Track] = []
    for i in frames_seen:
        boxes = [box(part_x(k, i)) for k in range(n_parts) if -R < part_x(k, i) < W + R]
        out += tracker.update(i, boxes)
    out += tracker.flush()
    parts = [round((speed * t.frame_index - R - t.box.cx) / spacing) for t in out]
    assert parts == list(range(n_parts)), [(t.track_id, t.frame_index, t.box.cx, t.reason) for t in out]


def test_a_part_on_a_stopped_belt_is_followed_after_the_belt_speed_was_learned() -> None:
    xs_a = [-50 + 40 * i for i in range(27)]  # part A crosses at full speed: the belt speed is learned
    xs_b = [-400 + 40 * i for i in range(18)] + [300] * 20 + [300 + 40 * i for i in range(1, 20)]  # B stops at 300
    frames = []
    for i in range(max(len(xs_a), len(xs_b))):
        xs = [xs[i] for xs in (xs_a, xs_b) if i < len(xs) and -R < xs[i] < W + R]
        frames.append([box(x) for x in xs])
    out = run(PartTracker(0.5, frame_width=W), frames)
    assert len(out) == 2 and out[0].box.cx > 450 and out[1].frame_index > 38, [(t.frame_index, t.box.cx) for t in out]


def test_gaps_in_which_a_part_travels_more_than_its_diameter_are_counted() -> None:
    tracker = PartTracker(0.5, frame_width=W)
    xs = {i: 100 + 40 * i for i in range(8)}  # 40 px/frame, radius 100: a diameter is 5 frames
    for i, x in xs.items():
        tracker.update(i, [box(x)])
    assert tracker.overruns == 0
    tracker.update(11, [box(100 + 40 * 11)])  # 4 frames skipped: 160 px, under a diameter
    assert tracker.overruns == 0
    tracker.update(17, [])  # 6 frames: 240 px, more than a diameter
    assert tracker.overruns == 1


@pytest.mark.parametrize("belt_speed", [36.0, 40.0, 44.0])
def test_a_steadily_slow_loop_follows_every_part_once_given_the_belt_speed(belt_speed: float) -> None:
    """A box that inspects only every 5th frame from the start sees each part move two
    radii between looks: no track is ever confirmed unless the belt speed is configured
    (inspect.belt_speed_px_per_frame; 10% off still works)."""
    spacing, n_parts = 350, 6

    def part_x(k: int, i: int) -> float:
        return 40.0 * i - spacing * k - R

    def handed(tracker: PartTracker) -> list[int]:
        out: list[Track] = []
        for i in range(0, 130, 5):
            out += tracker.update(i, [box(part_x(k, i)) for k in range(n_parts) if -R < part_x(k, i) < W + R])
        out += tracker.flush()
        return [round((40 * t.frame_index - R - t.box.cx) / spacing) for t in out]

    assert handed(PartTracker(0.5, frame_width=W)) != list(range(n_parts))
    assert handed(PartTracker(0.5, frame_width=W, expected_speed=belt_speed)) == list(range(n_parts))


def test_a_belt_running_right_to_left_is_followed_only_when_configured_so() -> None:
    spacing, n_parts = 350, 6

    def part_x(k: int, i: int) -> float:  # parts enter at the right edge and move left
        return W + R - (40.0 * i - spacing * k)

    def handed(tracker: PartTracker) -> tuple[list[int], int]:
        out: list[Track] = []
        most_followed = 0
        for i in range(130):
            out += tracker.update(i, [box(part_x(k, i)) for k in range(n_parts) if -R < part_x(k, i) < W + R])
            most_followed = max(most_followed, tracker.followed)
        out += tracker.flush()
        return [round((40 * t.frame_index - W - R + t.box.cx) / spacing) for t in out], most_followed

    parts, most_followed = handed(PartTracker(0.5, frame_width=W, direction=-1))
    assert parts == list(range(n_parts)) and most_followed >= 1
    assert handed(PartTracker(0.5, frame_width=W)) == ([], 0)  # every sighting seems to run backwards


def test_a_part_on_a_belt_that_stops_just_before_it_is_due_is_cropped_where_it_is(tmp_path: Path) -> None:
    """The real daemon step (predictive crop, the default), real model and audit trail: the belt
    stops between two frames just before part 1 is due. Cut at the predicted position, its crop
    was 0.6 of a radius off, half its neighbour in view and a defect on its trailing side out
    of it. Every crop judged must hold its part centred as the model was trained."""
    from edge.config import Config
    from edge.daemon import Daemon
    from edge.delivery.journal import Journal
    from edge.delivery.mqtt import Publisher
    from edge.delivery.mqtt_settings import MqttSettings
    from edge.inference import bundle as bundle_fmt
    from edge.inference.inspector import Inspector
    from edge.ops.audit import AuditSettings, AuditTrail
    from edge.vision.camera import Camera
    from edge.vision.locate import DATASET_CONFIG
    from edge.vision.simulate import DATASET_BACKDROP_LEVEL, belt, camera, place_part
    from edge.vision.sources import Frame, IterSource

    if not (bundle_fmt.DEFAULT_BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {bundle_fmt.DEFAULT_BUNDLE}")
    cfg = Config.model_validate({"inspect": {"mode": "continuous", "belt_speed_px_per_frame": 80}})
    journal = Journal(tmp_path / "journal.sqlite")
    publisher = Publisher(MqttSettings(host="127.0.0.1", port=9, prefix="test/stop"), journal)  # never started
    trail = AuditTrail(AuditSettings(tmp_path / "audit", sample_accepted=1.0))
    daemon = Daemon(cfg, Camera(IterSource("none", lambda: iter([]), fps=10)), publisher,
                    Inspector.load(bundle_fmt.load(bundle_fmt.DEFAULT_BUNDLE)), audit=trail)
    r, speed, spacing = 130, 80, 270  # parts 10 px apart
    parts = [synthetic_part(21 + i) for i in range(3)]
    x0 = [-140 - spacing * i for i in range(3)]
    due = next(k for k in range(200) if x0[1] + speed * k >= 640 - 0.75 * speed)  # part 1 due by prediction
    rng = np.random.default_rng(0)
    try:
        for k in range(due + 6):
            frame = belt(level=DATASET_BACKDROP_LEVEL)
            for img, x in zip(parts, x0, strict=True):
                frame = place_part(frame, img, x + speed * min(k, due - 1), 360, 2 * r, 0, context=1.2)
            gray = camera(frame, noise=rng.normal(0, 2, frame.shape).astype(np.float32))
            daemon._continuous_step(Frame(gray, float(k), float(k), k))
        assert trail.flush()
    finally:
        trail.close()
        journal.close()
    crops = sorted((tmp_path / "audit").glob("*.png"))
    assert len(crops) == 2, crops  # parts 0 and 1 reached the line; part 2 stopped before it
    for path in crops:
        crop = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        (rim,) = [b for b in find_parts(crop, DATASET_CONFIG) if b.fully_in_view]
        assert abs(rim.cx - 149.5) < 8 and abs(rim.cy - 149.5) < 8, (path.name, rim)


def test_released_predictions_keep_belt_order() -> None:
    """The daemon confirms each predicted hand-over in the frame (tracker.confirm); one it cannot
    confirm (a hand over the part) is released with every due part behind it, and they are
    handed over in belt order by observation: a part behind never gets its decision first."""
    r, v, spacing = 100.0, 120.0, 300.0
    tracker = PartTracker(0.5, frame_width=1280, predictive=True, expected_speed=v)

    def x(name: str, k: int) -> float:
        return 630 - v * (6 - k) - spacing * "ABC".index(name)

    names: dict[int, str] = {}
    order = []
    for k in range(16):
        seen = [(n, x(n, k)) for n in "ABC" if r <= x(n, k) <= 1279 - r and not (n == "A" and k in (7, 8))]
        due = tracker.due(k)
        assert [t.box.cx for t in due] == sorted((t.box.cx for t in due), reverse=True)  # downstream first

        def locate(t: Track, k: int = k) -> PartBox | None:  # A is not confirmed where predicted
            return None if names.get(t.track_id) == "A" and k in (6, 7, 8) else t.box

        order += [names[t.track_id] for t in tracker.confirm(due, locate)]
        boxes = [PartBox(cx, 360.0, r, 0.9, True) for _, cx in seen]
        out = tracker.update(k, boxes, payload=k)
        for live in tracker._live:  # name tracks by their latest box (scaffolding)
            for (n, cx), b in zip(seen, boxes, strict=True):
                if live.box == b:
                    names[live.track_id] = n
        order += [names[t.track_id] for t in out]
    order += [names[t.track_id] for t in tracker.flush()]
    assert order == ["A", "B", "C"]


@pytest.mark.parametrize("event", ["stop_during_a_stall", "jerk_back"])
def test_a_belt_that_stops_or_jerks_back_decides_each_part_once(event: str) -> None:
    """A belt stopping while the loop skips 3 frames (each lost track predicted the part 90 px
    on, found it where it stopped, made a new track for it and decided it again), or jogged
    back 40 px (0.4 radius) in one frame: every part still handed over once, in belt order."""
    v, spacing = 30.0, 300.0

    def travel(k: int) -> float:
        if event == "stop_during_a_stall":
            return v * min(k, 24)  # stopped from frame 24 on, with part 0 past the line
        return v * k - (70.0 if k >= 12 else 0.0)  # one frame 40 px back instead of 30 on

    schedule = [k for k in range(60) if not (event == "stop_during_a_stall" and 25 <= k <= 27)]
    tracker, out = PartTracker(0.5, frame_width=W, expected_speed=v), []
    for k in schedule:
        xs = [-100 + travel(k) - spacing * i for i in range(3)]
        boxes = [box(x) for x in xs if -R < x < W - 1 + R]
        out += tracker.update(k, boxes, payload=k)
    out += tracker.flush()
    ids = [t.track_id for t in out]
    assert len(ids) == len(set(ids)) and ids == sorted(ids), [(t.track_id, t.reason, t.box.cx) for t in out]
    first_x = [-100 + travel(t.frame_index) - spacing * i for i, t in enumerate(out)]
    assert all(abs(t.box.cx - x) < 1 for t, x in zip(out, first_x, strict=True))  # part i is the i-th out
    assert len(out) == sum(-100 + travel(59) - spacing * i >= R for i in range(3))  # those wholly in view
