"""A config that validates but cannot be used on this box stops the daemon with one line, exit 2.

Run as the operator runs it (a subprocess of the real CLI), because the promise is about what
reaches the terminal and journald: a key and a path to fix, never a traceback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import pytest
from daemon_run import dump_config

from edge.inference import bundle as bundle_fmt
from tests.conftest import ROOT, part_image


def _config(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    cv2.imwrite(str(frames / "a.png"), part_image(0))
    cfg: dict[str, Any] = {
        "camera": {"source": str(frames)},
        "mqtt": {"host": "127.0.0.1", "port": 1},  # nothing listens: the publisher keeps retrying
        "journal": {"path": str(tmp_path / "state" / "journal.sqlite")},
        "audit": {"dir": None},
        "drift": {"enabled": False},
        "service": {"ready_timeout_s": 0},
        "log_level": "WARNING",
    }
    return dump_config(tmp_path / "c.yaml", cfg, sections)


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)


def _not_a_folder(tmp_path: Path) -> Path:
    f = tmp_path / "plain-file"
    f.write_text("not a folder\n")
    return f


CASES = {
    "audit dir under a file": (lambda t: {"audit": {"dir": str(_not_a_folder(t) / "audit")}}, "audit.dir"),
    "journal under a file": (lambda t: {"journal": {"path": str(_not_a_folder(t) / "j.sqlite")}}, "journal.path"),
    "camera file missing": (lambda t: {"camera": {"source": str(t / "missing.avi")}}, "camera.source"),
    "password file missing": (lambda t: {"mqtt": {"username": "cam1", "password_file": str(t / "nope")}},
                              "mqtt.password_file"),
    "client certificate missing": (lambda t: {"mqtt": {"tls": {"cert_file": str(t / "c.pem"),
                                                               "key_file": str(t / "c.key")}}}, "mqtt.tls"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_unusable_setting_stops_the_daemon_with_one_line_naming_it(tmp_path: Path, case: str) -> None:
    sections, key = CASES[case]
    cfg = _config(tmp_path, **sections(tmp_path))
    checked = _run(tmp_path, "--check-config", str(cfg))  # valid by the schema, but cannot run (issue 18.4)
    assert checked.returncode == 2 and key in checked.stderr and "Traceback" not in checked.stderr, checked.stderr
    r = _run(tmp_path, "--config", str(cfg), "--duration", "2", "--quiet")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, r.stderr
    assert key in r.stderr, r.stderr


def test_a_good_config_still_runs(tmp_path: Path) -> None:
    # The same base config, unchanged: proves the cases above fail for their one setting.
    r = _run(tmp_path, "--config", str(_config(tmp_path)), "--duration", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(("text", "where"), [
    ("mqtt:\n  host: 127.0.0.1\n  password_file: pw.txt\n", "c.yaml:3: mqtt.password_file:"),
    ("audit:\n  max_mb: .inf\n", "c.yaml:2: audit.max_mb:"),
    ("mqtt:\n  host: a\nmqtt:\n  host: b\n", "c.yaml:3: mqtt: repeated key"),
])
def test_check_config_lists_what_used_to_pass(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    r = _run(tmp_path, "--check-config", "c.yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert where in r.stderr, r.stderr


def test_the_shipped_config_checks_ok_and_says_which_model_decides_how() -> None:
    r = _run(ROOT, "--check-config", str(ROOT / "config.yaml"))
    assert r.returncode == 0, r.stderr
    first, *rest = r.stdout.splitlines()
    b = bundle_fmt.load(ROOT / "models" / "casting-cnn")
    assert first.endswith("config.yaml: ok") and len(rest) == 1, r.stdout
    assert rest[0].startswith(f"  model: {b.path} ({b.short_id}), threshold {b.threshold:.8g} (the bundle's), "
                              f"{b.meta.get('views', 1)} view(s), "), r.stdout
    assert rest[0].endswith(", sealed"), r.stdout
    assert (", logit output, " in rest[0]) == (b.meta["output"].get("represents") == "logit"), r.stdout
    assert (", tones matched, " in rest[0]) == ("tone" in b.meta["input"].get("part_only", {})), r.stdout


def test_check_config_names_an_override_and_the_shadow(tmp_path: Path) -> None:
    live, shadow = ROOT / "models" / "casting-cnn", ROOT / "models" / "casting-cnn-crisp"
    b, c = bundle_fmt.load(live), bundle_fmt.load(shadow)
    cfg = _config(tmp_path, model={"bundle": str(live), "threshold": 0.01, "shadow": str(shadow),
                                   "shadow_record": str(tmp_path / "shadow.jsonl")})
    r = _run(tmp_path, "--check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()[1:]
    assert lines[0].startswith(f"  model: {b.path} ({b.short_id}), threshold 0.01 "
                               f"(override; the bundle's {b.threshold:.8g}), "), lines
    assert lines[1] == (f"  shadow: {c.path} ({c.short_id}), threshold {c.threshold:.8g} (the bundle's), 1 view(s), "
                        "no guard, whole crop, sealed; never actuates"), lines


def test_check_config_says_when_the_highest_view_decides(tmp_path: Path) -> None:
    live = ROOT / "models" / "casting-cnn"
    highest = tmp_path / "highest"
    shutil.copytree(live, highest, ignore=shutil.ignore_patterns("figures", "checkpoints", "*.keras"))
    meta = json.loads((highest / bundle_fmt.SIDECAR_FILE).read_text())
    bundle_fmt.write_sidecar(highest, dict(meta, views=4, view_aggregate="max"))  # re-sealed: deliberate
    cfg = _config(tmp_path, model={"bundle": str(live), "shadow": str(highest),
                                   "shadow_record": str(tmp_path / "shadow.jsonl")})
    r = _run(tmp_path, "--check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    shadow = r.stdout.splitlines()[2]
    assert shadow.startswith("  shadow: ") and ", 4 view(s) (the highest decides), " in shadow, shadow
    live_max = bundle_fmt.load(live).meta.get("view_aggregate") == "max"
    assert ("(the highest decides)" in r.stdout.splitlines()[1]) == live_max  # as its own model.json says


def test_a_config_path_that_cannot_even_be_looked_at_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # As for /etc/edge-inspect created 0750 root:root: the service user gets EACCES, which
    # pathlib's is_file() raises. Root cannot be denied here; a name too long fails the same way.
    run = _run(tmp_path, "--config", str(tmp_path / ("x" * 300)))
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "cannot look at the config file: File name too long" in run.stderr
