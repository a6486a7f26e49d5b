from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import Config
from edge.daemon import Daemon
from edge.delivery.journal import Journal
from edge.delivery.mqtt import Publisher
from edge.delivery.mqtt_settings import MqttSettings
from edge.inference import bundle as bundle_fmt
from edge.inference.inspector import Inspector
from edge.ops.audit import AuditSettings, AuditTrail
from edge.ops.telemetry import Telemetry
from edge.vision.camera import Camera
from edge.vision.sources import IterSource

ROOT = Path(__file__).resolve().parents[2]


def crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (300, 300), dtype=np.uint8)  # incompressible


def decision(part_id: str, verdict: str, seq: int | None = 1) -> dict[str, object]:
    d: dict[str, object] = {"part_id": part_id, "decision": verdict, "p_defect": 0.9 if verdict == "reject" else 0.1}
    if seq is not None:
        d["seq"] = seq
    return d


def du(folder: Path) -> int:
    """Bytes the folder's files take on disk (what `du` reports), not their length."""
    return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())


def test_rejects_saved_losslessly_accepts_sampled(tmp_path: Path) -> None:
    trail = AuditTrail(AuditSettings(tmp_path, sample_accepted=0.0))
    assert trail.record(decision("r1", "reject", seq=7), crop(1))
    assert not trail.record(decision("a1", "accept", seq=8), crop(2))
    assert trail.record(decision("f1", "reject", seq=9), None)  # a fault: no crop, still evidence
    assert trail.flush()
    trail.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000000007-r1.json", "000000000007-r1.png", "000000000009-f1.json"]
    assert np.array_equal(cv2.imread(str(tmp_path / "000000000007-r1.png"), cv2.IMREAD_UNCHANGED), crop(1))
    assert json.loads((tmp_path / "000000000007-r1.json").read_text())["p_defect"] == 0.9
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o600}  # evidence is private

    all_accepts = AuditTrail(AuditSettings(tmp_path / "all", sample_accepted=1.0))
    assert all(all_accepts.record(decision(f"a{i}", "accept", seq=i), crop(i)) for i in range(5))
    all_accepts.close()
    assert len(list((tmp_path / "all").glob("*.png"))) == 5


def test_budget_evicts_oldest_first_and_holds_across_restarts(tmp_path: Path) -> None:
    budget = 5 * 92_000  # about five incompressible 300x300 PNGs
    trail = AuditTrail(AuditSettings(tmp_path, max_bytes=budget))
    for i in range(12):
        trail.record(decision(f"p{i:02d}", "reject", seq=i + 1), crop(i))
    trail.close()
    kept = sorted(p.stem.split("-", 1)[1] for p in tmp_path.glob("*.png"))
    assert du(tmp_path) <= budget and 3 <= len(kept) <= 5
    assert kept == [f"p{i:02d}" for i in range(12 - len(kept), 12)]  # the newest survive
    assert trail.evicted == 12 - len(kept)
    # A new run counts what is already there.
    again = AuditTrail(AuditSettings(tmp_path, max_bytes=budget))
    for i in range(12, 15):
        again.record(decision(f"p{i:02d}", "reject", seq=i + 1), crop(i))
    again.close()
    assert du(tmp_path) <= budget
    assert "000000000015-p14" in {p.stem for p in tmp_path.glob("*.png")}
    # Names sort in decision order: `ls` lists the evidence as the line decided it.
    seqs = [json.loads(p.read_text())["seq"] for p in sorted(tmp_path.glob("*.json"))]
    assert seqs == sorted(seqs) and seqs[-1] == 15


def test_budget_counts_disk_blocks_not_file_lengths(tmp_path: Path) -> None:
    # Faults: ~100-byte JSONs, each taking a whole block (4 KiB on ext4) and an inode.
    budget = 64 * 1024
    trail = AuditTrail(AuditSettings(tmp_path, max_bytes=budget))
    for i in range(60):
        trail.record(decision(f"F-{i}", "reject", seq=i + 1), None)
    trail.close()
    assert 0 < du(tmp_path) <= budget, f"{du(tmp_path)} bytes on disk for a {budget}-byte budget"
    assert du(tmp_path) <= trail.bytes <= budget  # the trail's own count is what the disk holds
    assert "000000000060-F-59.json" in {p.name for p in tmp_path.iterdir()}
    # A restart with a smaller budget measures the folder the same way.
    smaller = AuditTrail(AuditSettings(tmp_path, max_bytes=budget // 2))
    smaller.close()
    assert 0 < du(tmp_path) <= budget // 2


def test_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    """A full disk (here: a file-size limit) must not leave `.tmp` files no budget counts."""
    code = f"""
import logging, sys, numpy as np
from pathlib import Path
from edge.ops.audit import AuditSettings, AuditTrail
logging.basicConfig(level=logging.ERROR, stream=sys.stdout)
trail = AuditTrail(AuditSettings(Path({str(tmp_path / 'audit')!r})))
for i in range(3):
    crop = np.random.default_rng(i).integers(0, 256, (300, 300), dtype=np.uint8)
    trail.record({{"part_id": f"R-{{i}}", "decision": "reject", "p_defect": 0.9, "seq": i + 1}}, crop)
trail.close()
print("errors", trail.errors, "saved", trail.saved)
"""

    def limit() -> None:  # in the child only: writes past 20 KiB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 1024, 20 * 1024))

    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       preexec_fn=limit, check=False)
    assert r.returncode == 0, r.stderr
    assert "errors 3 saved 0" in r.stdout, r.stdout
    assert sorted(p.name for p in (tmp_path / "audit").iterdir()) == []


def test_restart_removes_stray_tmp_files(tmp_path: Path) -> None:
    """A power cut between write and rename leaves `.tmp` files: the next start deletes them."""
    (tmp_path / "000000000003-R-3.png.tmp").write_bytes(b"\0" * 300_000)
    (tmp_path / "R-1.json.tmp").write_bytes(b"{")
    trail = AuditTrail(AuditSettings(tmp_path, max_bytes=200_000))
    trail.record(decision("R-4", "reject", seq=4), crop(4))
    trail.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000000004-R-4.json", "000000000004-R-4.png"]
    assert trail.evicted == 0 and du(tmp_path) <= trail.bytes <= 200_000


def test_parts_with_the_same_file_name_keep_their_own_evidence(tmp_path: Path) -> None:
    long = "L" * 120
    trail = AuditTrail(AuditSettings(tmp_path))
    trail.record(decision("LOT7/0042", "reject", seq=1), crop(1))
    trail.record(decision("LOT7_0042", "reject", seq=2), None)  # another part, a fault: no crop
    trail.record(decision(long + "-a", "reject", seq=3), crop(3))
    trail.record(decision(long + "-b", "reject", seq=4), crop(4))
    trail.close()
    # The PLC reuses a part id after a restart.
    again = AuditTrail(AuditSettings(tmp_path))
    again.record(decision("LOT7/0042", "reject", seq=5), crop(5))
    again.record(decision("NOSEQ", "reject", seq=None), crop(6))  # no journal seq: still never overwritten
    again.record(decision("NOSEQ", "reject", seq=None), crop(7))
    again.close()
    saved = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted((d.get("seq"), d["part_id"]) for d in saved.values() if "seq" in d) == [
        (1, "LOT7/0042"), (2, "LOT7_0042"), (3, long + "-a"), (4, long + "-b"), (5, "LOT7/0042")]
    assert sum(d["part_id"] == "NOSEQ" for d in saved.values()) == 2
    pngs = {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in tmp_path.glob("*.png")}
    assert len(pngs) == 6
    for stem, img in pngs.items():  # every crop sits next to its own decision
        d = saved[stem]
        assert np.array_equal(img, crop(d["seq"])) if "seq" in d else any(np.array_equal(img, crop(s)) for s in (6, 7))
    assert not (tmp_path / "000000000002-LOT7_0042.png").exists()


def test_dropped_writes_are_counted(tmp_path: Path) -> None:
    trail = AuditTrail(AuditSettings(tmp_path, queue_size=1))
    accepted = sum(trail.record(decision(f"R-{i}", "reject", seq=i + 1), crop(0)) for i in range(200))
    trail.close()
    assert trail.dropped == 200 - accepted > 0
    assert trail.stats()["dropped"] == trail.dropped


def test_audit_counters_in_daemon_status_and_metrics(tmp_path: Path) -> None:
    """`audit write failed` is counted where monitoring sees it: status and /metrics."""
    if not (bundle_fmt.DEFAULT_BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {bundle_fmt.DEFAULT_BUNDLE}")
    cfg = Config.model_validate({"inspect": {"mode": "trigger"}})
    journal = Journal(tmp_path / "journal.sqlite")
    publisher = Publisher(MqttSettings(host="127.0.0.1", port=9, prefix="test/audit"), journal)  # never started
    trail = AuditTrail(AuditSettings(tmp_path / "audit", max_bytes=8192))  # two faults' JSONs
    daemon = Daemon(cfg, Camera(IterSource("none", lambda: iter([]), fps=10)), publisher,
                    Inspector.load(bundle_fmt.load(bundle_fmt.DEFAULT_BUNDLE)), audit=trail)
    telemetry = Telemetry(daemon.status)
    try:
        for i in range(4):  # stale triggers: fail-safe rejects, audited without a crop
            daemon.trigger(f"S-{i}", sent_ts=time.time() - 3600)
        daemon.run(duration_s=0.5)
        assert trail.flush()
        names = sorted(p.name for p in (tmp_path / "audit").iterdir())
        assert len(names) == 2 and names[-1].endswith("-S-3.json")
        assert json.loads((tmp_path / "audit" / names[-1]).read_text())["seq"] == int(names[-1].split("-")[0])
        for p in (tmp_path / "audit").iterdir():  # the folder goes away under the daemon (unmounted, deleted)
            p.unlink()
        (tmp_path / "audit").rmdir()
        daemon.trigger("S-4", sent_ts=time.time() - 3600)
        daemon.run(duration_s=0.3)
        assert trail.flush()
        status = daemon.status()["audit"]
        assert {k: status[k] for k in ("saved", "errors", "evicted")} == {"saved": 4, "errors": 1, "evicted": 2}
        metrics = {s.name: s.value for fam in text_string_to_metric_families(generate_latest(telemetry.registry)
                                                                               .decode()) for s in fam.samples}
        assert metrics["edge_audit_errors_total"] == 1
        assert metrics["edge_audit_evicted_total"] == 2
        assert metrics["edge_audit_dropped_total"] == 0
    finally:
        trail.close()
        journal.close()


def test_part_ids_never_escape_the_folder(tmp_path: Path) -> None:
    trail = AuditTrail(AuditSettings(tmp_path / "audit"))
    assert (tmp_path / "audit").stat().st_mode & 0o777 == 0o700
    trail.record(decision("../../etc/passwd", "reject"), crop(0))
    trail.close()
    assert [p.name for p in (tmp_path / "audit").iterdir() if p.suffix == ".png"] == [
        "000000000001-_.._etc_passwd.png"]
    assert not (tmp_path / "etc").exists()
