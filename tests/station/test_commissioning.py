"""Commissioning a new line, the whole loop (issue 20): collect -> label -> adapt -> shadow ->
promote, against the real daemon (a subprocess), a real Mosquitto and the real trainer.

The "new line" is made here: real test castings on a dark belt (grey 70) with nothing of the
dataset's plate around them, a part of another size, seen through a soft lens (Gaussian blur
of 2.5 px over every frame), written to a video with OpenCV, so the truth (order and label of
every part) is known and stands in for the inspector's eye. The shipped bundle rejects good
parts there (12 of 16 parts right, 0 defects accepted): a line it was not made for. (Earlier
lines of this test, a dark belt under a dim lamp and then a light belt under a bright lamp,
were each handled by a newer shipped bundle or lost the part's rim against the belt.)
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from broker import Mosquitto
from conftest_mqtt import Collector, mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, write_config

from edge.delivery.contract import Topics
from edge.inference import bundle as bundle_fmt
from edge.offline.labels import MANIFEST
from edge.vision.simulate import SimulatedLine, write_video
from tests.conftest import ROOT
from trainer.cli import main as train_main

PER_CLASS = 8  # parts of each class on the new line
LENS_BLUR = 2.5  # px (Gaussian sigma) of the new line's soft lens
# The shadow and the promoted runs must judge the same frames for their verdicts to be compared
# exactly: the daemon keeps only the newest frame, so one that falls behind the 25 fps video on a
# loaded machine judges a part in another frame. Half speed leaves it room.
COMPARED_FPS = 12.5
QUICK = ["--folds", "2", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "8", "--max-int8-drop", "100"]


def _new_line(tmp: Path, casting_data: Path) -> tuple[Path, list[str]]:
    picks = []
    for cls in ("def_front", "ok_front"):
        files = sorted((casting_data / "test" / cls).glob("*.jpeg"))
        picks.append([files[i] for i in np.linspace(7, len(files) - 8, PER_CLASS).astype(int)])
    paths = [p for pair in zip(*picks, strict=True) for p in pair]
    labels = [p.parent.name for p in paths]
    parts = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    sim = SimulatedLine(parts, labels, speed_px=40, diameter_px=250, diameter_jitter=0.05, y_jitter=30,
                        belt_level=70, context=1.0, seed=11)
    video = tmp / "new-line.avi"
    write_video(video, (cv2.GaussianBlur(frame, (0, 0), LENS_BLUR) for frame, _truth in sim), fps=25)
    return video, labels


def _run(cfg: Path, port: int, t: Topics, n: int) -> tuple[list[dict[str, Any]], str]:
    """The daemon over the whole video; the decisions published, in order."""
    sub = Collector(port, [t.decision])
    try:
        assert sub.subscribed.wait(5)
        with DaemonProcess(cfg) as proc:
            out = proc.join()
        assert proc.returncode == 0, out[-3000:]
        assert sub.wait(lambda ms: len(ms) >= n, 10), out[-3000:]
        time.sleep(0.3)
        got = [m.json for m in sub.on(t.decision)]
    finally:
        sub.close()
    assert len(got) == n, [d["part_id"] for d in got]
    return got, out


def _cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_a_new_line_is_collected_labelled_adapted_shadowed_and_promoted(
        mosquitto: Mosquitto, tmp_path: Path, casting_data: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    video, truth = _new_line(tmp_path, casting_data)
    n = len(truth)
    live = tmp_path / "live"
    shutil.copytree(BUNDLE, live, ignore=shutil.ignore_patterns("figures", "*.md", "checkpoints"))
    base_id = bundle_fmt.load(live).short_id
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)

    # 1. Collect: every judged crop with its decision.
    crops = tmp_path / "collected"
    run1 = tmp_path / "run1"
    run1.mkdir()
    cfg = write_config(run1, mosquitto.port, prefix, video, model={"bundle": str(live)},
                       collect={"dir": str(crops)}, audit={"dir": None})
    first, _ = _run(cfg, mosquitto.port, t, n)
    assert {d["model"] for d in first} == {base_id}
    by_part = {d["part_id"]: label for d, label in zip(first, truth, strict=True)}  # belt order = truth order
    # 2. Label: the sheet lists every crop; the inspector's verdicts (the truth) become a labelled folder.
    sheet, labelled = tmp_path / "sheet.csv", tmp_path / "labelled"
    r = _cli("edge.offline.label_cli", "sheet", str(crops), "--out", str(sheet))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(sheet.read_text().splitlines()))
    assert sorted(row["part_id"] for row in rows) == sorted(by_part)
    for row in rows:
        row["label"] = "defect" if by_part[row["part_id"]] == "def_front" else "ok"
    with open(sheet, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = _cli("edge.offline.label_cli", "apply", str(crops), str(sheet), "--out", str(labelled), "--who", "inspector")
    assert r.returncode == 0, r.stderr
    assert len(list((labelled / "def_front").glob("*.png"))) == PER_CLASS
    assert len(list((labelled / "ok_front").glob("*.png"))) == PER_CLASS
    manifest = [json.loads(line) for line in (labelled / MANIFEST).read_text().splitlines()]
    assert len(manifest) == n and {m["who"] for m in manifest} == {"inspector"}
    assert {m["part_id"]: m["label"] for m in manifest} == by_part

    # 3. Adapt on half of each class; the other half is held out for its report.
    adapted = tmp_path / "adapted"
    assert train_main(["adapt", "--base", str(live), "--data", str(labelled), "--out", str(adapted),
                       "--original", str(casting_data), "--original-limit", "60",
                       "--per-class", str(PER_CLASS // 2), *QUICK]) == 0
    capsys.readouterr()
    cand_id = bundle_fmt.load(adapted).short_id
    assert cand_id != base_id and "held-out new line" in (adapted / "report.md").read_text()

    # 4. Shadow: the same line again, the adapted bundle judging every part beside the live one.
    record = tmp_path / "shadow.jsonl"
    run2 = tmp_path / "run2"
    run2.mkdir()
    cfg2 = write_config(run2, mosquitto.port, prefix, video, audit={"dir": None},
                        camera={"source": str(video), "loop": False, "fps": COMPARED_FPS},
                        model={"bundle": str(live), "shadow": str(adapted), "shadow_record": str(record)})
    second, _ = _run(cfg2, mosquitto.port, t, n)
    shadow_rows = [json.loads(line) for line in record.read_text().splitlines()]
    # every part judged by both; what the gate was told is the live verdict, not the shadow's
    assert [r["seq"] for r in shadow_rows] == [d["seq"] for d in second]
    assert [(r["live"]["decision"], r["live"]["p_defect"]) for r in shadow_rows] == [
        (d["decision"], d["p_defect"]) for d in second]
    assert {d["model"] for d in second} == {base_id}
    assert all(r["shadow"]["model"] == cand_id and r["live"]["model"] == base_id for r in shadow_rows)
    disagree = [r["part_id"] for r in shadow_rows if r["live"]["decision"] != r["shadow"]["decision"]]
    assert disagree, "the adapted bundle decides every part of the new line as the base does"
    r = _cli("edge.cli", "--shadow-summary", str(record))
    assert r.returncode == 0, r.stderr
    for pid in disagree:
        assert pid in r.stdout, (pid, r.stdout)
    assert f"{len(disagree)}" in r.stdout

    # 5. Promote: the candidate goes live in the live folder; the next pass decides as the shadow said.
    run3 = tmp_path / "run3"
    run3.mkdir()
    cfg3 = write_config(run3, mosquitto.port, prefix, video, model={"bundle": str(live)}, audit={"dir": None},
                        camera={"source": str(video), "loop": False, "fps": COMPARED_FPS})
    r = _cli("edge.cli", "--config", str(cfg3), "--promote", str(adapted))
    assert r.returncode == 0, r.stderr
    third, _ = _run(cfg3, mosquitto.port, t, n)
    assert {d["model"] for d in third} == {cand_id}
    assert {d["threshold"] for d in third} == {bundle_fmt.load(adapted).threshold}
    # what the shadow record said the candidate would decide is what it decides live
    assert [(d["decision"], d["reason"], d["p_defect"]) for d in third] == [
        (r["shadow"]["decision"], r["shadow"]["reason"], r["shadow"]["p_defect"]) for r in shadow_rows]
    correct = sum((d["decision"] == "reject") == (label == "def_front") for d, label in zip(third, truth, strict=True))
    base_correct = sum((d["decision"] == "reject") == (label == "def_front")
                       for d, label in zip(first, truth, strict=True))
    # For the issue note (-s). Not asserted: a few seconds of tuning on 4 parts a class shows the
    # loop, not what adaptation achieves (that is casting_512_dark's report, docs/commissioning.md).
    print(f"new line: base {base_correct}/{n} correct, adapted {correct}/{n}")
    # 6. Rollback in one command.
    r = _cli("edge.cli", "--config", str(cfg3), "--rollback")
    assert r.returncode == 0, r.stderr
    assert bundle_fmt.load(live).short_id == base_id

