"""Faults injected into the real daemon (subprocess), real Mosquitto, real video files:
each asserts the exact outcome the gate sees."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from broker import Mosquitto, StallProxy, free_port
from conftest import ROOT
from conftest_mqtt import Collector, mosquitto, require_mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, write_config

from edge.delivery.contract import Topics
from edge.delivery.journal import Journal
from edge.inference import bundle as bundle_fmt
from edge.vision.simulate import (
    DATASET_BACKDROP_LEVEL,
    belt,
    place_part,
    synthetic_part,
    write_video,
)
from edge.vision.simulate import camera as camera_fx
from tests.station.test_lifecycle import drawn_line  # noqa: F401 - fixture


@pytest.fixture(autouse=True)
def need_bundle() -> None:
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")


def video(path: Path, frames: list[np.ndarray], fps: float = 25) -> Path:
    write_video(path, frames, fps=fps)
    return path


def trigger_and_collect(sub: Collector, t: Topics, ids: list[str], n_expected: int) -> list[dict]:
    for part_id in ids:
        sub.client.publish(t.trigger, json.dumps({"part_id": part_id}), qos=1)
        time.sleep(0.1)
    assert sub.wait(lambda ms: sum(m.topic == t.decision for m in ms) >= n_expected, 30)
    return [m.json for m in sub.on(t.decision)]


@pytest.mark.parametrize("case", ["frozen", "black", "ended"])
def test_camera_faults_give_fail_safe_rejects(mosquitto: Mosquitto, tmp_path: Path,  # noqa: F811
                                              case: str) -> None:
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    base = belt(level=DATASET_BACKDROP_LEVEL)
    if case == "frozen":  # the same frame forever: a hung capture pipeline
        src = video(tmp_path / "frozen.avi", [base] * 60)
        camera, expected = {"loop": True, "frozen_after": 10}, "fault:frozen_frame"
    elif case == "black":  # lens cap, lamp off: frames come but show nothing
        src = video(tmp_path / "black.avi", [np.zeros_like(base) + np.uint8(i % 2) for i in range(60)])
        camera, expected = {"loop": True}, "fault:no_part"
    else:  # the stream ends and does not come back
        src = video(tmp_path / "short.avi", [np.clip(base.astype(int) + i, 0, 255).astype(np.uint8) for i in range(5)])
        camera, expected = {"loop": False, "stale_after_s": 0.3}, None
    cfg = write_config(tmp_path, mosquitto.port, prefix, src, camera=camera,
                       inspect={"mode": "trigger", "trigger_wait_s": 0.5})
    sub = Collector(mosquitto.port, [t.decision, t.status])
    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: any(m.topic == t.status and m.json["state"] == "online" for m in ms), 30)
            time.sleep(1.0)  # frozen: enough repeats; ended: the stream is over
            got = trigger_and_collect(sub, t, ["F-1", "F-2"], 2)
            out = proc.stop()
    finally:
        sub.close()
    assert proc.returncode == 0, out[-2000:]
    assert sorted(d["part_id"] for d in got) == ["F-1", "F-2"]
    for d in got:
        assert d["decision"] == "reject" and d["p_defect"] is None
        if expected:
            assert d["reason"] == expected, d
        else:
            assert d["reason"] in ("fault:stale_frame", "fault:no_frame_after_trigger"), d


def test_broker_unreachable_at_start_then_everything_is_delivered(tmp_path: Path) -> None:
    require_mosquitto()
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    port = free_port()
    parts = belt(level=DATASET_BACKDROP_LEVEL)
    src = video(tmp_path / "belt.avi", [np.clip(parts.astype(int) + i % 3, 0, 255).astype(np.uint8) for i in range(30)])
    cfg = write_config(tmp_path, port, prefix, src, camera={"loop": True},
                       inspect={"mode": "trigger"}, service={"ready_timeout_s": 1.0})
    broker = Mosquitto(tmp_path / "broker", port=port, persistence=True)
    try:
        with DaemonProcess(cfg, "-v") as proc:
            time.sleep(4)  # the daemon is up and degraded, retrying the broker
            assert proc.poll() is None
            broker.start()
            with closing(Collector(port, [t.decision, t.status])) as sub:
                assert sub.wait(lambda ms: any(m.topic == t.status and m.json["state"] == "online" for m in ms), 30)
                got = trigger_and_collect(sub, t, ["U-1"], 1)
            out = proc.stop()
    finally:
        broker.stop()
    assert proc.returncode == 0
    assert "starting degraded" in out and "broker" in out
    assert [d["part_id"] for d in got] == ["U-1"]
    with Journal(tmp_path / "journal.sqlite") as j:
        assert j.counts()["pending"] == 0


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_damaged_model_refuses_to_start_with_the_file_named(tmp_path: Path, damage: str) -> None:
    bad = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bad, ignore=shutil.ignore_patterns("checkpoints", "figures", "model.keras"))
    model = bad / "model.tflite"
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
    elif damage == "garbage":
        model.write_bytes(np.random.default_rng(0).bytes(model.stat().st_size))
    else:
        model.unlink()
    cfg = write_config(tmp_path, 1883, "test/x/cam1", tmp_path, model={"bundle": str(bad)})
    with DaemonProcess(cfg) as proc:
        out = proc.join(30)
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert str(model) in out or "model.tflite" in out, out
    assert ("sha256" in out or "missing" in out or "not found" in out), out


def test_a_hand_edited_threshold_refuses_to_start_and_says_where_an_override_belongs(tmp_path: Path) -> None:
    bad = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bad, ignore=shutil.ignore_patterns("checkpoints", "figures", "model.keras"))
    sidecar = bad / "model.json"
    sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), threshold=0.9)))
    cfg = write_config(tmp_path, 1883, "test/x/cam1", tmp_path, model={"bundle": str(bad)})
    with DaemonProcess(cfg) as proc:
        out = proc.join(30)
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert str(sidecar) in out and "threshold 0.9" in out and "model.threshold" in out, out


def test_network_stall_without_disconnect_loses_nothing(drawn_line: Path, tmp_path: Path) -> None:  # noqa: F811
    """The link freezes (no FIN, no RST) while parts keep passing: keepalive gives the link
    up, decisions wait in the journal, and after the stall each is delivered or late."""
    require_mosquitto()
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    proxy = StallProxy(broker.port).start()
    cfg = write_config(tmp_path, proxy.port, prefix, drawn_line, camera={"loop": True},
                       mqtt={"keepalive_s": 2, "decision_deadline_s": 60.0})
    journal = tmp_path / "journal.sqlite"
    try:
        with closing(Collector(broker.port, [t.decision, t.late], session=True)) as sub, \
                DaemonProcess(cfg) as proc:  # the subscriber talks to the broker directly
            assert sub.wait(lambda ms: len(ms) >= 1, 60), "no decision before the stall"
            proxy.stall()
            with Journal(journal) as j:
                before = j.counts()["total"]
                time.sleep(8)  # several keepalive periods; parts keep being decided
                assert j.counts()["total"] >= before + 2, "no decisions journaled during the stall"
            proxy.resume()
            with Journal(journal) as j:
                target = j.counts()["total"]
            assert sub.wait(lambda ms: {m.json["seq"] for m in ms} >= set(range(1, target + 1)), 60)
            out = proc.stop()
            assert proc.returncode == 0, out[-2000:]
            with Journal(journal) as j:
                rows = [j.get(seq) for seq in range(1, j.counts()["total"] + 1)]
            assert sub.wait(lambda ms: {m.json["seq"] for m in ms} >= {r.seq for r in rows if r}, 10)
            seen = {(m.topic, m.json["seq"]) for m in sub.messages}
    finally:
        proxy.stop()
        broker.stop()
    assert proxy.connections >= 2, "the stalled connection was never given up"
    for row in rows:
        assert row is not None and row.state in ("delivered", "late"), row
        assert ((t.decision if row.state == "delivered" else t.late), row.seq) in seen, row


def _limit_file_size(max_bytes: int) -> Callable[[], None]:
    """preexec_fn: writes past max_bytes fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def test_journal_disk_full_stops_with_offline_and_publishes_nothing_unjournaled(
        mosquitto: Mosquitto, tmp_path: Path) -> None:  # noqa: F811
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    base = belt(level=DATASET_BACKDROP_LEVEL)
    src = video(tmp_path / "belt.avi", [np.clip(base.astype(int) + i % 3, 0, 255).astype(np.uint8) for i in range(30)])
    cfg = write_config(tmp_path, mosquitto.port, prefix, src, camera={"loop": True}, inspect={"mode": "trigger"})
    with closing(Collector(mosquitto.port, [t.decision, t.status])) as sub:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "--config", str(cfg), "--quiet"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=_limit_file_size(48 * 1024))
        try:
            assert sub.wait(lambda ms: any(m.topic == t.status and m.json["state"] == "online" for m in ms), 30)
            sub.client.publish(t.trigger, json.dumps({"part_id": "D-1"}), qos=1)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert sub.wait(lambda ms: ms[-1].topic == t.status and ms[-1].json["state"] == "offline", 10)
        decisions = sub.on(t.decision)
    assert proc.returncode == 1 and "Traceback" not in out, out[-2000:]
    assert "journal write failed, stopping" in out, out[-2000:]
    assert decisions == []  # never a decision that is not journaled: the gate rejects D-1 on its deadline


def test_audit_disk_full_is_logged_and_inspection_goes_on(tmp_path: Path) -> None:
    code = f"""
import logging, sys, numpy as np
from pathlib import Path
from edge.ops.audit import AuditSettings, AuditTrail
logging.basicConfig(level=logging.ERROR, stream=sys.stdout)
trail = AuditTrail(AuditSettings(Path({str(tmp_path / 'audit')!r})))
crop = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
for i in range(3):
    trail.record({{"part_id": f"R-{{i}}", "decision": "reject", "p_defect": 0.9}}, crop)
trail.close()
print("errors", trail.errors, "saved", trail.saved)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       preexec_fn=_limit_file_size(20 * 1024))
    assert r.returncode == 0, r.stderr
    assert "errors 3 saved 0" in r.stdout and "audit write failed" in r.stdout, r.stdout


class _JumpedClock:
    """`time` as the delivery modules see it, with the wall clock jumped by `offset` seconds
    (NTP stepping the clock, an RTC reset). Monotonic time is untouched, as on Linux."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_clock_jump_forward_during_an_outage_sends_decisions_late_never_to_the_gate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decisions pending across a forward jump of an hour are past their deadline by the
    new clock: they go to /decision/late for audit, never to the gate; none is lost."""
    from conftest_mqtt import decision, settings

    import edge.delivery.mqtt as mqtt_mod
    import edge.delivery.outbox as outbox_mod
    from edge.delivery.mqtt import Publisher

    require_mosquitto()
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    journal = Journal(tmp_path / "j.sqlite")
    pub = Publisher(settings(broker.port, prefix, decision_deadline_s=30.0, reconnect_min_delay_s=0.1,
                             reconnect_max_delay_s=0.3), journal)
    try:
        with closing(Collector(broker.port, [t.decision, t.late], session=True)) as sub:
            pub.start()
            assert pub.wait_connected(5)
            broker.stop()
            for i in range(3):
                pub.publish_decision(decision(f"J-{i}"))
            for module in (mqtt_mod, outbox_mod):  # the outbox routes by the wall clock, MQTT stamps status
                monkeypatch.setattr(module, "time", _JumpedClock(3600.0))
            broker.start()
            assert sub.wait(lambda ms: len({m.json["seq"] for m in ms}) >= 3, 20), [m.topic for m in sub.messages]
            assert pub.flush(10)
            got = [(m.topic, m.json["part_id"]) for m in sub.messages]
    finally:
        pub.stop()
        broker.stop()
    assert sorted(got) == [(t.late, f"J-{i}") for i in range(3)], got
    counts = journal.counts()
    journal.close()
    assert counts["late"] == 3 and counts["pending"] == 0


def _belt_with(*parts: tuple[bool, float, float], n: int = 30, seed: int = 0) -> list[np.ndarray]:
    """n noisy frames of one still scene: drawn parts (defective?, cx, cy), rim 300 px."""
    scene = belt(level=DATASET_BACKDROP_LEVEL)
    for k, (defect, cx, cy) in enumerate(parts):
        scene = place_part(scene, synthetic_part(3 if defect else 1, defect=defect), cx, cy, 300, 0, context=1.2)
    rng = np.random.default_rng(seed)
    return [camera_fx(scene, noise=rng.normal(0, 1.5, scene.shape).astype(np.float32)) for _ in range(n)]


def _one_trigger(mosquitto: Mosquitto, tmp_path: Path, frames: list[np.ndarray], model_bundle: str | None = None,
                 **inspect: object) -> tuple[dict, str]:
    """The decision for one trigger on a looping still scene, and the daemon's output."""
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    model = {"model": {"bundle": model_bundle}} if model_bundle else {}
    cfg = write_config(tmp_path, mosquitto.port, prefix, video(tmp_path / "scene.avi", frames),
                       camera={"loop": True}, inspect={"mode": "trigger", "trigger_wait_s": 0.5, **inspect},
                       **model)
    sub = Collector(mosquitto.port, [t.decision, t.status])
    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: any(m.topic == t.status and m.json["state"] == "online" for m in ms), 30)
            (got,) = trigger_and_collect(sub, t, ["P-1"], 1)
            out = proc.stop()
    finally:
        sub.close()
    assert proc.returncode == 0, out[-2000:]
    return got, out


def test_a_trigger_is_never_answered_with_the_neighbours_verdict(mosquitto: Mosquitto,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    # The announced part (defective) is still entering, cut by the frame edge; the good part
    # before it is fully in view, far past the line. Judging that one accepted a defect.
    (tmp_path / "alone").mkdir()
    alone, _ = _one_trigger(mosquitto, tmp_path / "alone", _belt_with((True, 640, 360)))
    assert (alone["decision"], alone["reason"]) == ("reject", "model")  # the control: it is seen as a defect
    got, out = _one_trigger(mosquitto, tmp_path, _belt_with((False, 1100, 360), (True, 40, 360)))
    assert (got["decision"], got["reason"]) == ("reject", "fault:no_part"), got
    # and the log says why, in case parts really stand elsewhere when triggered
    assert "whole part in view but none on the inspection line" in out and "part_x=[0.859]" in out, out[-2000:]


@pytest.mark.parametrize("scene", ["empty", "part"])
def test_a_fixed_roi_without_a_whole_part_in_it_is_a_fault_not_a_verdict(mosquitto: Mosquitto,  # noqa: F811
                                                                         tmp_path: Path, scene: str) -> None:
    # An empty or misloaded fixture used to be cropped and judged: an empty belt was accepted.
    frames = _belt_with((False, 640, 360)) if scene == "part" else _belt_with()
    got, _ = _one_trigger(mosquitto, tmp_path, frames, locate="roi", roi=[455, 175, 370, 370])
    if scene == "part":  # a verdict: the drawn part scores near any bundle's threshold, so either one
        assert got["reason"] == "model" and got["decision"] in ("accept", "reject"), got
    else:
        assert (got["decision"], got["reason"]) == ("reject", "fault:no_part"), got


def test_a_part_never_fully_in_view_is_rejected_as_a_fault_in_belt_order(mosquitto: Mosquitto,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    # Continuous mode: the second part rides along the top edge of the frame, half cut off.
    # It cannot be judged, but it must not pass unanswered either.
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    rng = np.random.default_rng(0)
    good = synthetic_part(1)
    frames = []
    for i in range(60):
        scene = belt(level=DATASET_BACKDROP_LEVEL)
        for cx, cy in ((-200 + 40 * i, 360), (-200 + 40 * (i - 14), 40)):
            scene = place_part(scene, good, cx, cy, 300, 0, context=1.2)
        frames.append(camera_fx(scene, noise=rng.normal(0, 1.5, scene.shape).astype(np.float32)))
    cfg = write_config(tmp_path, mosquitto.port, prefix, video(tmp_path / "line.avi", frames))
    sub = Collector(mosquitto.port, [t.decision])
    try:
        with DaemonProcess(cfg) as proc:
            out = proc.join()
        assert sub.wait(lambda ms: len(ms) >= 2, 10), out[-2000:]
        got = [m.json for m in sub.on(t.decision)]
    finally:
        sub.close()
    assert proc.returncode == 0, out[-2000:]
    # the whole part gets the model's verdict (a drawn part scores near any bundle's threshold)
    assert [d["reason"] for d in got] == ["model", "fault:not_in_full_view"] and got[1]["decision"] == "reject"
    assert got[0]["seq"] < got[1]["seq"] and "without ever being fully in view" in out


def _guarded_bundle(tmp_path: Path) -> Path:
    """The shipped model with a guard calibrated on drawn parts (the scenes below are drawn too)."""
    from edge.inference.guard import calibrate
    from edge.vision.partview import rim_circle

    dest = tmp_path / "guarded"
    shutil.copytree(BUNDLE, dest, ignore=shutil.ignore_patterns("checkpoints", "figures", "model.keras"))
    parts = np.stack([synthetic_part(i, defect=i % 3 == 0) for i in range(40)])
    limits, _ = calibrate(parts, [rim_circle(p) for p in parts])
    meta = json.loads((dest / "model.json").read_text())
    meta["guard"] = limits.to_meta()
    bundle_fmt.write_sidecar(dest, meta)  # re-sealed: a deliberate change
    return dest


@pytest.mark.parametrize("kind", ["hand", "tool"])
def test_a_covered_part_is_a_guard_fault_never_a_verdict(mosquitto: Mosquitto, tmp_path: Path,  # noqa: F811
                                                         kind: str) -> None:
    from edge.offline.occlude import cover

    bundle = _guarded_bundle(tmp_path)
    good = synthetic_part(1)
    covered, share = cover(good, 0.4, kind, seed=3)
    assert share >= 1 / 3

    def scene(part: np.ndarray) -> list[np.ndarray]:
        s = place_part(belt(level=DATASET_BACKDROP_LEVEL), part, 640, 360, 300, 0, context=1.2)
        rng = np.random.default_rng(0)
        return [camera_fx(s, noise=rng.normal(0, 1.5, s.shape).astype(np.float32)) for _ in range(30)]

    (tmp_path / "clean").mkdir()
    clean, _ = _one_trigger(mosquitto, tmp_path / "clean", scene(good), model_bundle=str(bundle))
    assert clean["reason"] == "model", clean  # the control: the whole part gets the model's verdict
    got, out = _one_trigger(mosquitto, tmp_path, scene(covered), model_bundle=str(bundle))
    assert got["decision"] == "reject" and got["reason"] in ("fault:occluded", "fault:unfamiliar"), got
    assert "guard: the model may not judge this part" in out, out[-2000:]
