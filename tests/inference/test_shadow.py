"""Shadow mode (issue 20.5): a candidate judges every part beside the live bundle, never actuating."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from broker import Mosquitto
from conftest_mqtt import Collector, mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, write_config

from edge.delivery.contract import Topics
from edge.inference import bundle as bundle_fmt
from edge.inference.judge import Judge
from edge.inference.shadow import summarize
from tests.conftest import ROOT


def _lenient_copy(tmp_path: Path) -> Path:
    """The shipped bundle with a threshold of 1 (an int8 p_defect stays below it): a candidate that
    accepts every part its guard lets through, so it disagrees on every model reject of the live one."""
    cand = tmp_path / "candidate"
    shutil.copytree(BUNDLE, cand, ignore=shutil.ignore_patterns("figures", "*.md", "*.keras", "checkpoints"))
    meta = json.loads((cand / bundle_fmt.SIDECAR_FILE).read_text())
    meta["threshold"] = 1.0
    bundle_fmt.write_sidecar(cand, meta)  # re-sealed: a deliberate change
    return cand


def test_the_shadow_judges_every_part_and_never_changes_what_the_gate_is_told(
        mosquitto: Mosquitto, tmp_path: Path) -> None:  # noqa: F811
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    candidate = _lenient_copy(tmp_path)
    record = tmp_path / "shadow.jsonl"
    cfg = write_config(tmp_path, mosquitto.port, prefix, Path("sim"), camera={"source": "sim", "loop": True},
                       model={"bundle": str(BUNDLE), "shadow": str(candidate), "shadow_record": str(record)},
                       collect={"dir": str(tmp_path / "collected")}, audit={"dir": None})
    sub = Collector(mosquitto.port, [t.decision, t.shadow])
    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: sum(m.topic == t.decision for m in ms) >= 4, 60), proc.stop()[-2000:]
            time.sleep(0.5)
            out = proc.stop()
        assert proc.returncode == 0, out[-3000:]
        time.sleep(0.5)  # the last shadow messages after the last decision
        published = {m.json["seq"]: m.json for m in sub.on(t.decision)}
        shadow_msgs = [m.json for m in sub.on(t.shadow)]
    finally:
        sub.close()
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    by_seq = {r["seq"]: r for r in rows}
    assert set(published) <= set(by_seq) and len(published) >= 4
    live = Judge.from_bundle(bundle_fmt.load(BUNDLE))
    cand = Judge.from_bundle(bundle_fmt.load(candidate))
    for png in sorted((tmp_path / "collected").glob("*.png")):
        seq = json.loads(png.with_suffix(".json").read_text())["seq"]
        crop = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        row = by_seq[seq]
        want_live, want_cand = live.judge(crop), cand.judge(crop)
        # What went to the gate is the live bundle's own verdict on this crop, shadow or not ...
        if seq in published:
            assert (published[seq]["decision"], published[seq]["p_defect"]) == (want_live.decision,
                                                                                 want_live.p_defect)
            assert published[seq]["model"] == bundle_fmt.load(BUNDLE).short_id
        assert (row["live"]["decision"], row["live"]["p_defect"]) == (want_live.decision, want_live.p_defect)
        # ... and the record holds the candidate's verdict on the same crop.
        assert (row["shadow"]["decision"], row["shadow"]["p_defect"]) == (want_cand.decision, want_cand.p_defect)
        assert row["agree"] == (want_live.decision == want_cand.decision)
    assert all(r["shadow"]["decision"] == "accept" or r["shadow"]["reason"].startswith("fault:") for r in rows)
    disagreements = [r for r in rows if not r["agree"]]
    assert disagreements, "the live bundle rejected no part on the sim line: nothing to disagree on"
    assert sorted(m["seq"] for m in shadow_msgs) == sorted(r["seq"] for r in disagreements)

    s = summarize(record)
    assert s["parts"] == len(rows) and len(s["disagreements"]) == len(disagreements)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "--shadow-summary", str(record)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"{len(rows)} parts" in r.stdout
    assert f"live reject shadow accept: {len(disagreements)}" in r.stdout
    assert sum(line.strip().startswith("part ") for line in r.stdout.splitlines()) == len(disagreements)


def test_a_shadow_bundle_that_cannot_load_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"camera:\n  source: sim\nmodel:\n  shadow: {tmp_path / 'no-such-bundle'}\n"
                   "mqtt:\n  host: 127.0.0.1\n  port: 1\n")
    for args in (["--check-config", str(cfg)], ["--config", str(cfg), "--duration", "1", "--quiet"]):
        r = subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "model.shadow" in r.stderr and "Traceback" not in r.stderr, r.stderr
