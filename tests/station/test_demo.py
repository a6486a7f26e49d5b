"""The trigger-mode demo (demo/trigger.yaml), run for real: the daemon with its own
Mosquitto, the simulated line announcing its parts, and `edge-gate --follow-triggers`
as subprocesses; the gate must actuate on the daemon's decisions, with no timeouts.
Also: a trigger sent to a continuous-mode daemon is said to be ignored."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from broker import Mosquitto, free_port
from conftest import ROOT
from conftest_mqtt import Collector, mosquitto, require_mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, write_config

from edge.delivery.contract import Topics
from edge.vision.simulate import DATASET_BACKDROP_LEVEL, belt, write_video

DEMO = ROOT / "demo" / "trigger.yaml"
DEMO_PREFIX = "demo/line1/cam1"


@pytest.fixture(autouse=True)
def need_bundle_and_broker() -> None:
    require_mosquitto()
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")


def demo_config(tmp_path: Path, port: int) -> Path:
    """demo/trigger.yaml as shipped, but on a free port and with its journal here (tests run
    side by side on one box; the shipped port and state/ belong to whoever runs the demo)."""
    cfg: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    cfg["model"]["bundle"] = str(BUNDLE)
    cfg["mqtt"]["port"] = port
    cfg["journal"]["path"] = str(tmp_path / "journal.sqlite")
    path = tmp_path / "trigger.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def gate_actions(out: str) -> dict[str, tuple[str, str]]:
    """part_id -> (ACCEPT|REJECT, reason) from edge-gate's lines (`ACCEPT part=ID reason=R seq=N`)."""
    acts = {}
    for line in out.splitlines():
        words = line.split()
        if not words or words[0] not in ("ACCEPT", "REJECT"):
            continue
        fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        acts[fields["part"]] = (words[0], fields.get("reason", ""))
    return acts


def test_the_trigger_demo_shows_the_gate_acting_on_each_decision(tmp_path: Path) -> None:
    port = free_port()
    config = demo_config(tmp_path, port)
    py = sys.executable
    daemon = subprocess.Popen([py, "-m", "edge.cli", "--config", str(config), "--duration", "14"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gate = subprocess.Popen([py, "-m", "edge.delivery.gate_cli", "--port", str(port), "--prefix", DEMO_PREFIX,
                             "--follow-triggers", "--wait-online", "30"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        d_out, d_err = daemon.communicate(timeout=120)
        g_out, g_err = gate.communicate(input="", timeout=30)  # stdin closed: the gate ends
    finally:
        for p in (daemon, gate):
            if p.poll() is None:
                p.kill()
    assert daemon.returncode == 0, d_err[-3000:]
    assert gate.returncode == 0, g_err[-3000:]
    assert f"url=mqtt://127.0.0.1:{port}" in d_err  # the daemon says where its broker is
    decided = {m.group(1): m.group(2) for m in re.finditer(r"part (\S+)\s+(ACCEPT|REJECT)\s", d_out)}
    acts = gate_actions(g_out)
    assert len(decided) >= 5, d_out + d_err[-2000:]
    # Every part the daemon decided and the gate was told about is actuated as decided, in time.
    both = [p for p in decided if p in acts]
    assert len(both) >= len(decided) - 2, (decided, acts)  # the gate may join after the first part
    for part in both:
        action, reason = acts[part]
        assert action == decided[part] and reason not in ("timeout", "offline", "link_down"), (part, acts[part])
    assert {a for a, _ in acts.values()} & {"ACCEPT", "REJECT"}
    # The simulated line triggers each part on the inspection line: none is missed as no_part.
    assert "fault:no_part" not in d_out, d_out


def test_the_demo_names_a_taken_port_instead_of_using_another_broker(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with DaemonProcess(demo_config(tmp_path, port), "--duration", "5") as proc:
            out = proc.join(60)
    assert proc.returncode == 1, out[-2000:]
    assert f"mqtt.port {port}: cannot listen on 127.0.0.1:{port}" in out and "Traceback" not in out, out[-2000:]


def test_the_readme_documents_the_demo_command_shipped_with_the_config() -> None:
    command = next(line.strip("# ").strip() for line in DEMO.read_text().splitlines() if "edge-gate" in line
                   and "edge-inspect" in line)
    assert "--config demo/trigger.yaml" in command and "--follow-triggers" in command
    assert "--port 18830" in command and yaml.safe_load(DEMO.read_text())["mqtt"]["port"] == 18830
    assert f"    {command}\n" in (ROOT / "README.md").read_text()


def test_triggers_sent_in_continuous_mode_are_said_to_be_ignored(mosquitto: Mosquitto,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    base = belt(level=DATASET_BACKDROP_LEVEL)
    rng = np.random.default_rng(0)
    video = tmp_path / "belt.avi"
    write_video(video, (np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8) for _ in range(50)),
                fps=25)
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    cfg = write_config(tmp_path, mosquitto.port, prefix, video, camera={"loop": True}, audit={"dir": None},
                       mqtt={"status_interval_s": 0.5})
    sub = Collector(mosquitto.port, [t.status, t.decision])
    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: any(m.topic == t.status and m.json["state"] == "online" for m in ms), 30)
            for i in range(5):
                sub.client.publish(t.trigger, json.dumps({"part_id": f"C-{i}", "ts": time.time()}), qos=1)
            assert sub.wait(lambda ms: any(m.topic == t.status and m.json.get("triggers_ignored_continuous") == 5
                                           for m in ms), 15), [m.json for m in sub.on(t.status)][-1:]
            out = proc.stop()
    finally:
        sub.close()
    assert proc.returncode == 0, out[-2000:]
    said = [line for line in out.splitlines() if "ignoring triggers: inspect.mode is continuous" in line]
    assert len(said) == 1 and " INFO " in said[0] and "part_id=C-0" in said[0], out[-2000:]  # once, not 5 times
    assert not sub.on(t.decision)  # nothing answered: there is no part C-0 in continuous mode
