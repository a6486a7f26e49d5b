"""Several cameras on one box: one daemon per camera (systemd/edge-inspect@.service), each with its
own config, journal and prefix on one shared broker, so one camera's crash or fault never stalls
another."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from broker import Mosquitto
from conftest import ROOT
from conftest_mqtt import Collector, mosquitto, require_mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, drawn_video, write_config

from edge.delivery.contract import Topics


def test_the_template_unit_verifies_for_an_instance(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    unit = (ROOT / "systemd" / "edge-inspect@.service").read_text()
    exe = shutil.which("edge-inspect") or str(Path(sys.executable).parent / "edge-inspect")
    path = tmp_path / "edge-inspect@cam2.service"
    path.write_text(unit.replace("/opt/edge-inspect/.venv/bin/edge-inspect", exe))
    r = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    for needed in ("--config /etc/edge-inspect/%i.yaml", "StateDirectory=edge-inspect/%i", "WatchdogSec=",
                   "Restart=on-failure", "Type=notify", "ProtectSystem=strict"):
        assert needed in unit, needed


def test_one_cameras_crash_never_stalls_the_other(mosquitto: Mosquitto, tmp_path: Path) -> None:  # noqa: F811
    require_mosquitto()
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    video = drawn_video(tmp_path)
    cams = {}
    for cam in ("cam1", "cam2"):
        (tmp_path / cam).mkdir()
        cams[cam] = write_config(tmp_path / cam, mosquitto.port, f"test/{tmp_path.name[-8:]}/line1/{cam}", video,
                                 camera={"loop": True})
    t1, t2 = (Topics(f"test/{tmp_path.name[-8:]}/line1/{c}") for c in ("cam1", "cam2"))
    sub = Collector(mosquitto.port, [t1.decision, t2.decision])
    try:
        with DaemonProcess(cams["cam1"]) as one, DaemonProcess(cams["cam2"]) as two:
            assert sub.wait(lambda ms: {m.topic for m in ms} == {t1.decision, t2.decision}, 90), "both decide"
            one.send_signal(signal.SIGKILL)  # camera 1's process dies (or hangs, or loses its camera)
            one.wait(30)
            after = len(sub.on(t2.decision))
            assert sub.wait(lambda ms: sum(m.topic == t2.decision for m in ms) >= after + 3, 60), "cam2 stalled"
            out = two.stop()
        assert two.returncode == 0, out[-3000:]
        seqs = [m.json["seq"] for m in sub.on(t2.decision)]
        assert seqs == sorted(set(seqs))  # camera 2's own journal: in order, none twice
    finally:
        sub.close()
