"""Commissioning, first steps (issue 20): the daemon collects crops, an inspector labels them,
and the labelled folder is one that replay and the trainer read."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from daemon_run import dump_config

from edge.offline.dataset import list_labelled
from edge.offline.labels import MANIFEST, LabelStore
from edge.ops.audit import AuditSettings, AuditTrail
from tests.conftest import ROOT


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=180)


def _label_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return _cli("-m", "edge.offline.label_cli", *args)


def _collect_on_the_simulated_line(tmp_path: Path) -> tuple[Path, Path]:
    cfg = dump_config(tmp_path / "c.yaml", {
        "camera": {"source": "sim"},
        "mqtt": {"host": "127.0.0.1", "port": 1},  # nothing listens: decisions stay journaled
        "journal": {"path": str(tmp_path / "journal.sqlite")},
        "audit": {"dir": None},
        "drift": {"enabled": False},
        "service": {"ready_timeout_s": 0},
        "log_level": "WARNING",
    }, {})
    crops = tmp_path / "collected"
    r = _cli("-m", "edge.cli", "--config", str(cfg), "--duration", "9", "--quiet", "--collect", str(crops))
    assert r.returncode == 0, r.stderr[-3000:]
    return crops, tmp_path / "journal.sqlite"


def test_the_daemon_collects_every_judged_crop_and_an_inspector_labels_them(tmp_path: Path) -> None:
    crops, journal = _collect_on_the_simulated_line(tmp_path)
    pngs = sorted(crops.glob("*.png"))
    assert len(pngs) >= 3, sorted(p.name for p in crops.iterdir())
    with sqlite3.connect(journal) as db:
        rows = {seq: json.loads(payload) for seq, payload in db.execute("SELECT seq, payload FROM decisions")}
    assert len(pngs) == len(rows)  # every part judged on a crop (the sim line has no faults without one)
    for png in pngs:
        meta = json.loads(png.with_suffix(".json").read_text())
        published = rows[meta["seq"]]
        assert (meta["part_id"], meta["decision"], meta["p_defect"]) == (
            published["part_id"], published["decision"], published["p_defect"])
        assert meta["model"] and meta["reason"] == "model"
        img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        assert img.shape == (300, 300) and img.dtype == np.uint8

    sheet = tmp_path / "verdicts.csv"
    r = _label_cli("sheet", str(crops), "--out", str(sheet))
    assert r.returncode == 0, r.stderr
    assert _label_cli("sheet", str(crops), "--out", str(sheet)).returncode == 2  # never overwrites a filled sheet
    with open(sheet, newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["crop"] for row in table] == [p.name for p in pngs]
    # The inspector's verdicts: the line's call for all but the last crop, which stays blank (skipped).
    for row in table[:-1]:
        row["label"] = "ng" if row["line_decision"] == "reject" else "ok"
    with open(sheet, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)

    labelled = tmp_path / "labelled"
    r = _label_cli("apply", str(crops), str(sheet), "--out", str(labelled), "--who", "A. Inspector")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (labelled / MANIFEST).read_text().splitlines()]
    assert len(records) == len(table) - 1
    for rec, row in zip(records, table, strict=False):
        assert rec["source"].endswith(row["crop"]) and rec["who"] == "A. Inspector" and rec["when"].endswith("Z")
        assert rec["label"] == ("def_front" if row["label"] == "ng" else "ok_front")
        stored = (labelled / rec["file"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == rec["sha256"] == hashlib.sha256(
            (crops / row["crop"]).read_bytes()).hexdigest()
        assert rec["decision"] == row["line_decision"]
    samples = list_labelled(labelled, require_both=False)  # the folder the trainer and replay read
    assert sorted(s.path.name for s in samples) == sorted(Path(r["file"]).name for r in records)
    assert all(p.is_file() for p in pngs)  # the collected crops stay where they were

    again = _label_cli("apply", str(crops), str(sheet), "--out", str(labelled), "--who", "A. Inspector")
    assert again.returncode == 0 and "0 added, 0 relabelled" in again.stdout, again.stdout
    # A second look overrules one verdict: the crop moves, the manifest keeps both verdicts.
    table[0]["label"] = "ok" if table[0]["label"] == "ng" else "defect"
    one = tmp_path / "second-look.csv"
    with open(one, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerow(table[0])
    r = _label_cli("apply", str(crops), str(one), "--out", str(labelled), "--who", "B. Lead")
    assert r.returncode == 0 and "1 relabelled" in r.stdout, r.stdout + r.stderr
    now = LabelStore(labelled).current()[records[0]["sha256"]]
    assert now.who == "B. Lead" and now.label != records[0]["label"]
    assert (labelled / now.file).is_file() and not (labelled / records[0]["file"]).exists()
    assert len((labelled / MANIFEST).read_text().splitlines()) == len(records) + 1

    replay = _cli("-m", "edge.cli", "--replay", str(labelled), "--no-progress")
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert f"files {len(records)}   scored {len(records)}   errors 0" in replay.stdout, replay.stdout


def test_a_bad_verdict_sheet_names_each_line_and_changes_nothing(tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(3):
        cv2.imwrite(str(crops / f"{i:012d}-P{i}.png"), np.full((300, 300), 40 * i, np.uint8))
    sheet = tmp_path / "v.csv"
    sheet.write_text("crop,label\n000000000000-P0.png,ok\n000000000001-P1.png,maybe\n"
                     "missing.png,defect\n../000000000002-P2.png,ok\n000000000000-P0.png,defect\n")
    labelled = tmp_path / "labelled"
    r = _label_cli("apply", str(crops), str(sheet), "--out", str(labelled), "--who", "A")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{sheet}:3: label 'maybe'" in r.stderr
    assert f"{sheet}:4: crop 'missing.png'" in r.stderr
    assert f"{sheet}:5: crop '../000000000002-P2.png'" in r.stderr
    assert f"{sheet}:6: crop 000000000000-P0.png is labelled again (first on line 2)" in r.stderr
    assert not labelled.exists()  # nothing applied from a sheet with a bad line
    no_who = _label_cli("apply", str(crops), str(sheet), "--out", str(labelled), "--who", " ")
    assert no_who.returncode == 2 and "--who" in no_who.stderr
    inside = _label_cli("apply", str(crops), str(sheet), "--out", str(crops / "labelled"), "--who", "A")
    assert inside.returncode == 2 and "inside the crops folder" in inside.stderr
    # A spreadsheet in a comma-decimal locale saves semicolons; the sheet still reads.
    (tmp_path / "semi.csv").write_text("crop;label;p_defect\n000000000000-P0.png;ok;0,12\n000000000001-P1.png;ng;0,97\n")
    r = _label_cli("apply", str(crops), str(tmp_path / "semi.csv"), "--out", str(labelled), "--who", "A")
    assert r.returncode == 0 and "2 added" in r.stdout, r.stdout + r.stderr
    assert LabelStore(labelled).counts() == {"ok_front": 1, "def_front": 1}
    shutil.rmtree(labelled)
    (tmp_path / "bare.csv").write_text("file,verdict\nx.png,ok\n")
    r = _label_cli("apply", str(crops), str(tmp_path / "bare.csv"), "--out", str(labelled), "--who", "A")
    assert r.returncode == 2 and "missing column(s) crop, label" in r.stderr


def test_collect_samples_rejects_and_accepts_alike_and_keeps_only_crops(tmp_path: Path) -> None:
    trail = AuditTrail(AuditSettings(tmp_path, sample_accepted=0.5, sample_rejected=0.5, crops_only=True,
                                     name="collect"), seed=3)
    crop = np.zeros((300, 300), np.uint8)
    wanted = {v: sum(trail.wants({"decision": v}) for _ in range(400)) for v in ("accept", "reject")}
    assert all(150 < n < 250 for n in wanted.values()), wanted
    assert not trail.wants({"decision": "reject"}, has_crop=False)
    assert not trail.record({"part_id": "F-1", "decision": "reject", "seq": 1}, None)
    full = AuditTrail(AuditSettings(tmp_path / "all", sample_accepted=1.0, sample_rejected=1.0, crops_only=True))
    assert all(full.record({"part_id": f"P-{i}", "decision": "accept", "seq": i}, crop) for i in range(1, 6))
    assert full.flush() and trail.flush()
    full.close()
    trail.close()
    assert len(list((tmp_path / "all").glob("*.png"))) == 5
    assert not list(tmp_path.glob("*F-1*"))
