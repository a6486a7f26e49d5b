"""The real daemon, end to end: video files written here with OpenCV -> `edge-inspect`
(a subprocess) -> a real Mosquitto on loopback -> a subscriber.

The videos show dataset test images on a conveyor at varying heights, sizes and
rotations, so the ground truth (order and label of every part) is known.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from broker import Mosquitto, free_port
from conftest_mqtt import Collector, require_mosquitto, retained
from daemon_run import BUNDLE, DEADLINE_S, DaemonProcess, write_config

from edge.delivery.contract import Topics
from edge.delivery.journal import Journal
from edge.inference import bundle as bundle_fmt
from edge.offline.replay import replay
from edge.vision.simulate import (
    DATASET_BACKDROP_LEVEL,
    DEMO_CONTEXT,
    SimulatedLine,
    belt,
    synthetic_part,
    write_video,
)

FIELDS = {"part_id", "seq", "ts", "frame_ts", "decision", "p_defect", "threshold", "reason", "model", "latency_ms"}


@dataclass(frozen=True)
class Line:
    video: Path
    labels: list[str]  # in the order the parts reach the inspection line


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory, casting_data: Path) -> Line:
    """8 test images (4 defective, 4 ok, interleaved) passing a 1280x720 camera at 25 fps."""
    picks = []
    for cls in ("def_front", "ok_front"):
        files = sorted((casting_data / "test" / cls).glob("*.jpeg"))
        picks.append([files[i] for i in np.linspace(0, len(files) - 1, 4).astype(int)])
    paths = [p for pair in zip(*picks) for p in pair]
    labels = [p.parent.name for p in paths]
    parts = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    sim = SimulatedLine(parts, labels, speed_px=40, diameter_px=280, diameter_jitter=0.08, y_jitter=50,
                        belt_level=DATASET_BACKDROP_LEVEL, context=DEMO_CONTEXT, seed=3)
    video = tmp_path_factory.mktemp("line") / "line.avi"
    write_video(video, (frame for frame, _truth in sim), fps=25)
    return Line(video, labels)


@pytest.fixture(scope="module")
def empty_belt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A belt with no part on it, for faults in trigger mode."""
    video = tmp_path_factory.mktemp("belt") / "belt.avi"
    base = belt(level=DATASET_BACKDROP_LEVEL)
    rng = np.random.default_rng(0)
    write_video(video, (np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8) for _ in range(50)),
                fps=25)
    return video


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    require_mosquitto()
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    # Persistent sessions, so a subscriber misses nothing across a broker restart.
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"), persistence=True).start()
    yield b
    b.stop()


def iso_ok(text: str) -> bool:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None


def test_continuous_one_decision_per_part_matching_replay(broker: Mosquitto, line: Line, tmp_path: Path) -> None:
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    sub = Collector(broker.port, [t.decision, t.status])
    try:
        assert sub.subscribed.wait(5)
        with DaemonProcess(write_config(tmp_path, broker.port, prefix, line.video)) as proc:
            out = proc.join()
        assert proc.returncode == 0, out[-3000:]
        assert sub.wait(lambda ms: sum(m.topic == t.decision for m in ms) >= len(line.labels), 10), out[-3000:]
        time.sleep(0.5)  # nothing more may arrive
        decisions = sub.on(t.decision)
        statuses = [m.json for m in sub.on(t.status)]
    finally:
        sub.close()
    got = [m.json for m in decisions]
    assert len(got) == len(line.labels), [d["part_id"] for d in got]
    assert len({d["part_id"] for d in got}) == len(got)
    assert [d["seq"] for d in got] == sorted(d["seq"] for d in got)
    model_id = bundle_fmt.load(BUNDLE).short_id
    for m, d in zip(decisions, got):
        assert m.qos == 1 and not m.retain and int(DEADLINE_S) - 1 <= m.expiry <= int(DEADLINE_S)  # whole seconds left, rounded down
        assert set(d) >= FIELDS, FIELDS - set(d)
        assert d["decision"] in ("accept", "reject") and d["reason"] == "model"
        assert 0.0 <= d["p_defect"] <= 1.0 and d["model"] == model_id
        assert d["decision"] == ("reject" if d["p_defect"] >= d["threshold"] else "accept")
        assert iso_ok(d["ts"]) and iso_ok(d["frame_ts"]) and d["latency_ms"] >= 0
    # The line's truth: parts arrive in order; the model may miss at most one of eight.
    truth = ["reject" if label == "def_front" else "accept" for label in line.labels]
    assert sum(d["decision"] == want for d, want in zip(got, truth)) >= len(truth) - 1, (
        [(d["decision"], d["p_defect"]) for d in got], truth)
    # Status: retained online while running (with counters), offline after a clean stop.
    assert any(s["state"] == "online" and "uptime_s" in s for s in statuses), statuses
    last = retained(broker.port, t.status)
    assert last is not None and last.json["state"] == "offline"
    # The audited crops are exactly what the model saw: replay gives the same answers.
    run = replay(tmp_path / "audit", bundle_fmt.load(BUNDLE))
    by_part = {Path(r.path).stem: r for r in run.results}  # <seq>-<part_id>: unique, in decision order
    assert set(by_part) == {f"{d['seq']:012d}-{d['part_id']}" for d in got}
    for d in got:
        r = by_part[f"{d['seq']:012d}-{d['part_id']}"]
        assert r.error is None and r.decision == d["decision"]
        assert r.p_defect == pytest.approx(d["p_defect"], abs=1e-6)
        saved = json.loads(Path(r.path).with_suffix(".json").read_text())
        assert saved["seq"] == d["seq"] and saved["p_defect"] == d["p_defect"]


def _transformed(video: Path, dest: Path, turn: Callable[[np.ndarray], np.ndarray]) -> Path:
    """`video` with every frame (grayscale) passed through `turn`, as another camera would film it."""
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (got := cap.read())[0]:
        frames.append(turn(cv2.cvtColor(got[1], cv2.COLOR_BGR2GRAY)))
    write_video(dest, iter(frames), fps=25)
    return dest


def _run_until_the_video_ends(broker: Mosquitto, run_dir: Path, video: Path, n_expected: int,
                              **over: Any) -> tuple[str, list[str]]:
    """(daemon output, decisions in arrival order) of one daemon run over `video`."""
    prefix = f"test/{run_dir.parent.name[-10:]}-{run_dir.name}/cam1"
    sub = Collector(broker.port, [Topics(prefix).decision])
    try:
        assert sub.subscribed.wait(5)
        config = write_config(run_dir, broker.port, prefix, video, audit={"dir": None}, **over)
        with DaemonProcess(config) as proc:
            out = proc.join()
        assert proc.returncode == 0, out[-3000:]
        sub.wait(lambda ms: len(ms) >= n_expected, 10)
        time.sleep(0.5)  # nothing more may arrive
        return out, [m.json["decision"] for m in sub.on(Topics(prefix).decision)]
    finally:
        sub.close()


def test_a_belt_running_the_other_way_is_reported_then_followed_once_configured(
        broker: Mosquitto, line: Line, tmp_path: Path) -> None:
    """The same line filmed mirrored (parts cross right to left): with the default
    belt_direction no part is followed, which the daemon must say rather than stay silent;
    with belt_direction: right_to_left every part is decided once, in order."""
    mirrored = _transformed(line.video, tmp_path / "mirrored.avi", lambda g: g[:, ::-1])
    truth = ["reject" if label == "def_front" else "accept" for label in line.labels]
    for direction in ("left_to_right", "right_to_left"):
        (tmp_path / direction).mkdir()
        out, got = _run_until_the_video_ends(broker, tmp_path / direction, mirrored,
                                             len(truth) if direction == "right_to_left" else 1,
                                             inspect={"belt_direction": direction})
        if direction == "left_to_right":
            assert "parts are in view but none is followed" in out and "belt_direction" in out, out[-3000:]
            assert got == []
        else:
            assert "none is followed" not in out
            assert len(got) == len(truth), out[-3000:]
            assert sum(g == want for g, want in zip(got, truth)) >= len(truth) - 1, (got, truth)


def test_a_camera_mounted_across_the_belt_is_turned_by_config(broker: Mosquitto, line: Line, tmp_path: Path) -> None:
    """The line filmed with the camera turned a quarter (parts run top to bottom):
    camera.rotate: 270 turns each frame back, and every part is decided once, in order."""
    turned = _transformed(line.video, tmp_path / "turned.avi", lambda g: cv2.rotate(g, cv2.ROTATE_90_CLOCKWISE))
    truth = ["reject" if label == "def_front" else "accept" for label in line.labels]
    out, got = _run_until_the_video_ends(broker, tmp_path, turned, len(truth), camera={"rotate": 270})
    assert len(got) == len(truth), out[-3000:]
    assert sum(g == want for g, want in zip(got, truth)) >= len(truth) - 1, (got, truth)


def test_sigkill_leaves_offline_retained(broker: Mosquitto, line: Line, tmp_path: Path) -> None:
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    sub = Collector(broker.port, [t.decision, t.status])
    try:
        with DaemonProcess(write_config(tmp_path, broker.port, prefix, line.video, camera={"loop": True})) as proc:
            assert sub.wait(lambda ms: any(m.topic == t.decision for m in ms), 60), "no decision from the daemon"
            st = retained(broker.port, t.status)
            assert st is not None and st.json["state"] == "online"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert sub.wait(lambda ms: ms[-1].topic == t.status and ms[-1].json["state"] == "offline", 10)
            st = retained(broker.port, t.status)
            assert st is not None and st.retain and st.json["state"] == "offline"
    finally:
        sub.close()
    # Every decision the daemon acknowledged to itself is in its journal, even after SIGKILL.
    with Journal(tmp_path / "journal.sqlite") as j:
        assert j.counts()["total"] >= 1


def test_trigger_answers_each_part_once_and_faults_reject(broker: Mosquitto, empty_belt: Path,
                                                          tmp_path: Path) -> None:
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    sub = Collector(broker.port, [t.decision, t.status])
    cfg = write_config(tmp_path, broker.port, prefix, empty_belt, camera={"loop": True},
                       inspect={"mode": "trigger", "trigger_wait_s": 1.0})
    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: any(m.topic == t.status and m.json["state"] == "online" for m in ms), 30)
            for part_id in ("A-1", "A-2", "A-1", "A-3", "A-2"):
                sub.client.publish(t.trigger, json.dumps({"part_id": part_id}), qos=1)
            # Sent 10 s ago (a stalled network, a backlog): the part is long gone.
            sub.client.publish(t.trigger, json.dumps({"part_id": "OLD-1", "ts": time.time() - 10}), qos=1)
            # A sender clock 10 s ahead is no proof of freshness; milliseconds are not seconds.
            sub.client.publish(t.trigger, json.dumps({"part_id": "FUT-1", "ts": time.time() + 10}), qos=1)
            sub.client.publish(t.trigger, json.dumps({"part_id": "MS-1", "ts": time.time() * 1000}), qos=1)
            # Sent a second ago: the gate's clock for it started then, and so does its deadline.
            aged_ts = time.time() - 1.0
            sub.client.publish(t.trigger, json.dumps({"part_id": "AGED-1", "ts": aged_ts}), qos=1)
            assert sub.wait(lambda ms: sum(m.topic == t.decision for m in ms) >= 6, 30)
            time.sleep(1.5)  # a duplicate would be answered within trigger_wait_s
            got = [m.json for m in sub.on(t.decision)]
            out = proc.stop()
    finally:
        sub.close()
    assert proc.returncode == 0, out[-3000:]
    assert sorted(d["part_id"] for d in got) == ["A-1", "A-2", "A-3", "AGED-1", "FUT-1", "OLD-1"]  # MS-1 refused
    (aged,) = [d for d in got if d["part_id"] == "AGED-1"]
    assert abs(datetime.fromisoformat(aged["deadline"]).timestamp() - (aged_ts + DEADLINE_S)) < 0.01, aged
    assert "not epoch seconds (milliseconds?)" in out
    for d in got:  # nothing on the belt: never silence, never accept
        want = "fault:stale_trigger" if d["part_id"] in ("OLD-1", "FUT-1") else "fault:no_part"
        assert d["decision"] == "reject" and d["reason"] == want and d["p_defect"] is None
    # A reject is evidence: each has its decision JSON in the audit folder.
    audited = [json.loads(p.read_text()) for p in (tmp_path / "audit").glob("*.json")]
    assert sorted(a["part_id"] for a in audited) == ["A-1", "A-2", "A-3", "AGED-1", "FUT-1", "OLD-1"]


def test_broker_restart_mid_run_loses_no_decision(line: Line, tmp_path: Path) -> None:
    require_mosquitto()
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    sub = Collector(broker.port, [t.decision, t.late], session=True)
    try:
        with DaemonProcess(write_config(tmp_path, broker.port, prefix, line.video, camera={"loop": True})) as proc:
            assert sub.wait(lambda ms: any(m.topic == t.decision for m in ms), 60), "no decision before the outage"
            broker.stop()
            with Journal(tmp_path / "journal.sqlite") as j:  # the daemon keeps inspecting without a broker
                before = j.counts()["total"]
                deadline = time.monotonic() + 30
                while j.counts()["total"] < before + 2 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert j.counts()["total"] >= before + 2, "no decisions journaled during the outage"
            broker.start()
            assert sub.wait(lambda ms: len(ms) > 0 and ms[-1].json["seq"] >= before + 3, 60)
            out = proc.stop()
            assert proc.returncode == 0, out[-3000:]
            with Journal(tmp_path / "journal.sqlite") as j:
                total = j.counts()["total"]
                rows = [j.get(seq) for seq in range(1, total + 1)]
            assert sub.wait(lambda ms: {m.json["seq"] for m in ms} >= set(range(1, total + 1)), 10)
    finally:
        sub.close()
        broker.stop()
    seen = {m.topic: set() for m in sub.messages}
    for m in sub.messages:
        seen[m.topic].add(m.json["seq"])
    for row in rows:
        assert row is not None and row.state in ("delivered", "late"), row
        topic = t.decision if row.state == "delivered" else t.late
        assert row.seq in seen.get(topic, set()), f"seq {row.seq} is {row.state} but never seen on {topic}"


def test_an_earlier_runs_undelivered_decisions_are_summarised_once_at_start(
        broker: Mosquitto, empty_belt: Path, tmp_path: Path) -> None:
    """A run whose decisions never reached a broker leaves them in the journal; the next run
    re-sends them on /decision/late, each with its own warning, which read as this run's
    decisions being late. One line at start must say what they are, before any of those."""
    parts = [synthetic_part(i, defect=i % 2 == 0) for i in range(4)]
    sim = SimulatedLine(parts, [None] * 4, speed_px=40, diameter_px=280, belt_level=DATASET_BACKDROP_LEVEL,
                        context=DEMO_CONTEXT, seed=3)
    video = tmp_path / "line.avi"
    write_video(video, (frame for frame, _truth in sim), fps=25)
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    nobody = free_port()  # no broker there: every decision stays journaled, undelivered
    first = write_config(tmp_path, nobody, prefix, video, audit={"dir": None}, service={"ready_timeout_s": 1.0},
                         mqtt={"decision_deadline_s": 1.0})
    with DaemonProcess(first) as proc:
        out1 = proc.join()
    assert proc.returncode == 0, out1[-3000:]
    with Journal(tmp_path / "journal.sqlite") as j:
        left = j.undelivered()
    assert len(left) >= 2, out1[-3000:]
    oldest = datetime.fromtimestamp(left[0].created_ts, tz=timezone.utc).isoformat(timespec="milliseconds")
    oldest = oldest.replace("+00:00", "Z")
    second = write_config(tmp_path, broker.port, prefix, empty_belt, camera={"loop": True}, audit={"dir": None},
                          mqtt={"decision_deadline_s": 1.0})
    sub = Collector(broker.port, [t.decision, t.late])
    try:
        with DaemonProcess(second) as proc:
            assert sub.wait(lambda ms: sum(m.topic == t.late for m in ms) >= len(left), 30), proc.out
            out2 = proc.stop()
    finally:
        sub.close()
    assert proc.returncode == 0, out2[-3000:]
    lines = out2.splitlines()
    summary = [i for i, line in enumerate(lines) if "decisions from an earlier run" in line]
    assert len(summary) == 1, out2[-3000:]
    line = lines[summary[0]]
    assert f"{len(left)} decisions from an earlier run (oldest {oldest})" in line, line
    assert f"sent now as late, on {t.late}" in line and "the gate must not act on them" in line, line
    per_row = [i for i, line in enumerate(lines) if "decision missed its deadline" in line]
    assert all(i > summary[0] for i in per_row), out2[-3000:]  # said before any per-decision line
    assert {m.json["seq"] for m in sub.on(t.late)} == {r.seq for r in left}
    assert not {m.json["seq"] for m in sub.on(t.decision)} & {r.seq for r in left}  # never to the gate
