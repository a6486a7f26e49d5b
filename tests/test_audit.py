from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edge.audit import AuditSettings, AuditTrail


def crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (300, 300), dtype=np.uint8)  # incompressible


def decision(part_id: str, verdict: str) -> dict[str, object]:
    return {"part_id": part_id, "decision": verdict, "p_defect": 0.9 if verdict == "reject" else 0.1, "seq": 1}


def test_rejects_saved_losslessly_accepts_sampled(tmp_path: Path) -> None:
    trail = AuditTrail(AuditSettings(tmp_path, sample_accepted=0.0))
    assert trail.record(decision("r1", "reject"), crop(1))
    assert not trail.record(decision("a1", "accept"), crop(2))
    assert trail.record(decision("f1", "reject"), None)  # a fault: no crop, still evidence
    assert trail.flush()
    trail.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f1.json", "r1.json", "r1.png"]
    assert np.array_equal(cv2.imread(str(tmp_path / "r1.png"), cv2.IMREAD_UNCHANGED), crop(1))
    assert json.loads((tmp_path / "r1.json").read_text())["p_defect"] == 0.9
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o600}  # evidence is private

    all_accepts = AuditTrail(AuditSettings(tmp_path / "all", sample_accepted=1.0))
    assert all(all_accepts.record(decision(f"a{i}", "accept"), crop(i)) for i in range(5))
    all_accepts.close()
    assert len(list((tmp_path / "all").glob("*.png"))) == 5


def test_budget_evicts_oldest_first_and_holds_across_restarts(tmp_path: Path) -> None:
    budget = 5 * 92_000  # about five incompressible 300x300 PNGs
    trail = AuditTrail(AuditSettings(tmp_path, max_bytes=budget))
    for i in range(12):
        trail.record(decision(f"p{i:02d}", "reject"), crop(i))
    trail.close()
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    kept = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert size <= budget and 3 <= len(kept) <= 5
    assert kept == [f"p{i:02d}" for i in range(12 - len(kept), 12)]  # the newest survive
    assert trail.evicted == 12 - len(kept)
    # A new run counts what is already there.
    again = AuditTrail(AuditSettings(tmp_path, max_bytes=budget))
    for i in range(12, 15):
        again.record(decision(f"p{i:02d}", "reject"), crop(i))
    again.close()
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= budget
    assert "p14" in {p.stem for p in tmp_path.glob("*.png")}


def test_part_ids_never_escape_the_folder(tmp_path: Path) -> None:
    trail = AuditTrail(AuditSettings(tmp_path / "audit"))
    assert (tmp_path / "audit").stat().st_mode & 0o777 == 0o700
    trail.record(decision("../../etc/passwd", "reject"), crop(0))
    trail.close()
    assert [p.name for p in (tmp_path / "audit").iterdir() if p.suffix == ".png"] == ["_.._etc_passwd.png"]
    assert not (tmp_path / "etc").exists()
