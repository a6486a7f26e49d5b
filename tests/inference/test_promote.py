"""Promotion and rollback of the live bundle (issue 20.6): renames only, nothing lost, the
running daemon switching on reload."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from broker import Mosquitto
from conftest_mqtt import Collector, mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, write_config

from edge.delivery.contract import Topics
from edge.inference import bundle as bundle_fmt
from edge.inference.promote import PromoteError, previous_of, promote, rollback
from tests.conftest import ROOT

CANDIDATE = ROOT / "models" / "casting-cnn-crisp"
_SKIP = ("figures", "*.md", "*.keras", "checkpoints")


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*_SKIP))
    return dest


def _id(folder: Path) -> str:
    return bundle_fmt.load(folder).short_id


def test_promote_keeps_the_old_bundle_and_rollback_swaps_them(tmp_path: Path) -> None:
    live = _copy(BUNDLE, tmp_path / "models" / "live")
    a, b = _id(live), _id(CANDIDATE)
    s = promote(live, CANDIDATE)
    assert (s.installed, s.kept) == (b, a)
    assert _id(live) == b and _id(previous_of(live)) == a
    assert _id(CANDIDATE) == b  # the candidate's own folder is copied, not moved
    s = rollback(live)
    assert (s.installed, s.kept) == (a, b) and _id(live) == a and _id(previous_of(live)) == b
    s = rollback(live)  # twice: the promotion again
    assert _id(live) == b and _id(previous_of(live)) == a
    # A third bundle: the one in .previous moves to history, never deleted.
    third = _copy(BUNDLE, tmp_path / "third")
    promote(live, third)
    assert _id(live) == a and _id(previous_of(live)) == b
    assert [_id(p) for p in (tmp_path / "models" / "live.history").iterdir()] == [a]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["live", "live.history", "live.previous"]


def test_a_broken_candidate_or_nothing_to_roll_back_changes_nothing(tmp_path: Path) -> None:
    live = _copy(BUNDLE, tmp_path / "live")
    broken = _copy(CANDIDATE, tmp_path / "broken")
    (broken / bundle_fmt.MODEL_FILE).write_bytes(b"not a model")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(PromoteError, match=r"candidate .*broken"):
        promote(live, broken)
    with pytest.raises(PromoteError, match="no previous bundle"):
        rollback(live)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and _id(live) == _id(BUNDLE)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  bundle: {live}\n")
    r = subprocess.run([sys.executable, "-m", "edge.cli", "--config", str(cfg), "--promote", str(broken)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nothing changed" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_running_daemon_switches_on_promote_and_back_on_rollback(mosquitto: Mosquitto,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    live = _copy(BUNDLE, tmp_path / "live")
    a, b = _id(live), _id(CANDIDATE)
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    cfg = write_config(tmp_path, mosquitto.port, prefix, Path("sim"), camera={"source": "sim", "loop": True},
                       model={"bundle": str(live)}, audit={"dir": None})
    sub = Collector(mosquitto.port, [t.decision])

    def models_seen() -> list[str]:
        return [m.json["model"] for m in sub.on(t.decision)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge.cli", "--config", str(cfg), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: len(ms) >= 1, 60), proc.stop()[-2000:]
            r = cli("--promote", str(CANDIDATE), "--reload", str(proc.pid))
            assert r.returncode == 0, r.stderr
            assert f"now {b}; {a} kept" in r.stdout
            assert sub.wait(lambda ms: models_seen()[-1:] == [b], 60), models_seen()
            r = cli("--rollback", "--reload", str(proc.pid))
            assert r.returncode == 0, r.stderr
            assert sub.wait(lambda ms: models_seen()[-1:] == [a], 60), models_seen()
            time.sleep(0.2)
            out = proc.stop()
        assert proc.returncode == 0, out[-3000:]
    finally:
        sub.close()
    seen = models_seen()
    first_b, last_b = seen.index(b), len(seen) - 1 - seen[::-1].index(b)
    assert set(seen[:first_b]) == {a} and set(seen[first_b:last_b + 1]) == {b} and set(seen[last_b + 1:]) == {a}
    assert json.loads((live / bundle_fmt.SIDECAR_FILE).read_text())["sha256"].startswith(a)


def test_promote_tells_which_of_its_own_promotion_checks_an_adapted_candidate_missed(tmp_path: Path) -> None:
    live = _copy(BUNDLE, tmp_path / "live")
    cand = _copy(CANDIDATE, tmp_path / "adapted")
    meta = json.loads((cand / bundle_fmt.SIDECAR_FILE).read_text())
    bar = "the base's bar kept on the original validation"
    meta.setdefault("metrics", {})["adapt"] = {"checks": [
        {"check": "no held-out defect accepted", "met": True, "figures": "0 accepted (the base: 0)"},
        {"check": bar, "met": False,
         "figures": "0 defect(s) accepted and 18 part(s) wrong against the base's 0 and 16"},
    ]}
    bundle_fmt.write_sidecar(cand, meta)  # re-sealed: as adapt writes it
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  bundle: {live}\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge.cli", "--config", str(cfg), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    r = cli("--promote", str(cand))
    assert r.returncode == 0, r.stderr  # told, not refused: the shadow record may have settled it
    assert _id(live) == _id(cand)
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: {_id(cand)}'s own report: not met: {bar}: 0 defect(s) accepted and 18 part(s) "
                      "wrong against the base's 0 and 16"]
    r = cli("--promote", str(BUNDLE))  # a bundle made by fit has no such checks: nothing to tell
    assert r.returncode == 0 and "warning:" not in r.stderr, r.stderr
