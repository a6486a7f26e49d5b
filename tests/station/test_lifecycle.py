"""systemd integration and live reload, against a real notify socket, a real broker and
the real daemon (drawn parts on a simulated line: no dataset needed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from broker import Mosquitto
from conftest import ROOT
from conftest_mqtt import Collector, mosquitto, retained  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, drawn_video, write_config

from edge.config import load
from edge.delivery.contract import Topics
from edge.delivery.journal import Journal
from edge.inference import bundle as bundle_fmt
from edge.service import run


@pytest.fixture(scope="module")
def drawn_line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return drawn_video(tmp_path_factory.mktemp("drawn"))


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.1)
    yield sock
    sock.close()


def drain(sock: socket.socket, seconds: float) -> list[str]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    return out


def test_ready_then_watchdog_from_the_loop_and_none_while_it_is_stuck(
        mosquitto: Mosquitto, drawn_line: Path, tmp_path: Path, notify_socket: socket.socket,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As systemd runs it: NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID in the environment."""
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    cfg = load(write_config(tmp_path, mosquitto.port, f"test/{tmp_path.name[-10:]}/cam1", drawn_line,
                            camera={"loop": True}))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    daemons: list = []
    t = threading.Thread(target=run, args=(cfg,), kwargs={"ready": daemons.append}, daemon=True)
    t.start()
    first = drain(notify_socket, 3.0)
    assert first and first[0].startswith("READY=1\nSTATUS=inspecting (continuous), model "), first[:3]
    assert sum(m == "WATCHDOG=1" for m in first) >= 10, first  # ~every 0.1 s
    daemon = daemons[0]
    with daemon.camera._cond:  # the loop blocks on its next frame, like a hung camera driver
        drain(notify_socket, 1.5)  # the pass in progress may still finish and ping once
        stuck = drain(notify_socket, 1.5)  # 15 watchdog periods
    assert "WATCHDOG=1" not in stuck, stuck
    resumed = drain(notify_socket, 1.5)
    assert sum(m == "WATCHDOG=1" for m in resumed) >= 5
    daemon.stop_event.set()
    t.join(15)
    assert not t.is_alive()
    assert drain(notify_socket, 0.5)[-1:] == ["STOPPING=1"]


def test_a_long_wait_for_a_frame_after_a_trigger_keeps_the_watchdog_fed(
        mosquitto: Mosquitto, tmp_path: Path, notify_socket: socket.socket,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Trigger mode with the camera gone (an empty folder never delivers a frame): each trigger
    waits trigger_wait_s for a frame. That wait used to block the loop's watchdog pings, so a
    trigger_wait_s longer than half of WatchdogSec got the service killed while it was
    answering every part with a fail-safe reject, exactly as it should."""
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    (tmp_path / "no-camera").mkdir()
    cfg = load(write_config(tmp_path, mosquitto.port, f"test/{tmp_path.name[-10:]}/cam1", tmp_path / "no-camera",
                            camera={"loop": True}, inspect={"mode": "trigger", "trigger_wait_s": 4.0},
                            service={"ready_timeout_s": 0}))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1s: ping every 0.5 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    daemons: list = []
    t = threading.Thread(target=run, args=(cfg,), kwargs={"ready": daemons.append}, daemon=True)
    t.start()
    assert any(m.startswith("READY=1") for m in drain(notify_socket, 2.0))
    daemon = daemons[0]
    daemon.trigger("P-1")
    during = drain(notify_socket, 3.0)  # inside the 4 s wait
    assert sum(m == "WATCHDOG=1" for m in during) >= 4, during
    time.sleep(1.5)
    assert daemon.counters.reasons == {"fault:no_frame_after_trigger": 1}  # and the part was still answered
    daemon.stop_event.set()
    t.join(15)
    assert not t.is_alive()


def test_sighup_switches_models_between_parts_and_refuses_a_corrupt_bundle(
        mosquitto: Mosquitto, drawn_line: Path, tmp_path: Path) -> None:  # noqa: F811
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    # A second bundle: same weights, another threshold, so every decision shows which one made it.
    other = tmp_path / "other"
    shutil.copytree(BUNDLE, other, ignore=shutil.ignore_patterns("checkpoints", "figures"))
    meta = json.loads((other / "model.json").read_text())
    meta["threshold"] = 0.99609375
    bundle_fmt.write_sidecar(other, meta)  # re-sealed: a deliberate change
    corrupt = tmp_path / "corrupt"
    shutil.copytree(other, corrupt)
    (corrupt / "model.tflite").write_bytes((corrupt / "model.tflite").read_bytes()[:5000])

    config = write_config(tmp_path, mosquitto.port, prefix, drawn_line, camera={"loop": True})
    sub = Collector(mosquitto.port, [t.decision, t.status])

    def thresholds() -> list[float]:
        return [m.json["threshold"] for m in sub.on(t.decision)]

    def point_config_at(bundle: Path) -> None:
        doc = yaml.safe_load(config.read_text())
        doc["model"]["bundle"] = str(bundle)
        config.write_text(yaml.safe_dump(doc))

    with closing(sub), DaemonProcess(config) as proc:
        assert sub.wait(lambda ms: sum(m.topic == t.decision for m in ms) >= 2, 60)
        point_config_at(other)
        proc.send_signal(signal.SIGHUP)
        assert sub.wait(lambda ms: thresholds()[-2:] == [0.99609375] * 2, 60), thresholds()
        point_config_at(corrupt)
        n = len(thresholds())
        proc.send_signal(signal.SIGHUP)
        assert sub.wait(lambda ms: len(thresholds()) >= n + 3, 60)
        out = proc.stop()
    assert proc.returncode == 0, out[-3000:]
    assert "reload refused" in out and "corrupt" in out, out[-3000:]
    assert out.count("drift baselines follow the new model") == 1, out[-3000:]  # the good reload only
    got = [m.json for m in sub.on(t.decision)]
    seqs = [d["seq"] for d in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # no part lost around the switches
    th = [d["threshold"] for d in got]
    switch = th.index(0.99609375)
    assert switch >= 2 and all(x != 0.99609375 for x in th[:switch]) and all(x == 0.99609375 for x in th[switch:])
    for d in got:
        assert d["decision"] == ("reject" if d["p_defect"] >= d["threshold"] else "accept")
    # SIGTERM: offline retained, journal consistent (everything delivered, nothing pending).
    st = retained(mosquitto.port, t.status)
    assert st is not None and st.json["state"] == "offline" and st.json["reason"] == "shutdown"
    with Journal(tmp_path / "journal.sqlite") as j:
        counts = j.counts()
    assert counts["pending"] == 0 and counts["total"] == len(got) == counts["delivered"]


def test_unit_file_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    unit = (ROOT / "systemd" / "edge-inspect.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's entry point.
    exe = shutil.which("edge-inspect") or str(Path(subprocess.sys.executable).parent / "edge-inspect")
    assert "/opt/edge-inspect/.venv/bin/edge-inspect" in unit
    path = tmp_path / "edge-inspect.service"
    path.write_text(unit.replace("/opt/edge-inspect/.venv/bin/edge-inspect", exe))
    r = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=strict", "NoNewPrivileges=yes",
                   "PrivateTmp=yes", "DeviceAllow=", "StateDirectory=", "ExecReload=/bin/kill -HUP $MAINPID",
                   "/etc/edge-inspect/config.yaml"):
        assert needed in unit, needed
