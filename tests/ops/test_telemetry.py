"""The Prometheus endpoint of a running daemon, scraped over HTTP."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from broker import Mosquitto, free_port
from conftest_mqtt import Collector, mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, write_config
from prometheus_client.parser import text_string_to_metric_families

from edge.delivery.contract import Topics
from edge.inference import bundle as bundle_fmt
from tests.station.test_lifecycle import drawn_line  # noqa: F401 - fixture


def scrape(port: int) -> dict[str, float | dict[str, str]]:
    """name{labels} -> value, and the model info labels under 'edge_model_info'."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float | dict[str, str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "edge_model_info":
                out[s.name] = dict(s.labels)
                continue
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


def test_metrics_match_the_decisions_published(mosquitto: Mosquitto, drawn_line: Path,  # noqa: F811
                                               tmp_path: Path) -> None:
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    port = free_port()
    cfg = write_config(tmp_path, mosquitto.port, prefix, drawn_line, camera={"loop": True},
                       inspect={"mode": "trigger", "trigger_wait_s": 1.0},
                       service={"metrics_listen": f"127.0.0.1:{port}"})
    sub = Collector(mosquitto.port, [t.decision, t.status])
    try:
        with DaemonProcess(cfg) as proc:
            assert sub.wait(lambda ms: any(m.topic == t.status and m.json["state"] == "online" for m in ms), 30)
            for i in range(6):  # one decision per trigger: counts are exact, not racing a moving line
                sub.client.publish(t.trigger, json.dumps({"part_id": f"P-{i}"}), qos=1)
                time.sleep(0.15)
            assert sub.wait(lambda ms: sum(m.topic == t.decision for m in ms) >= 6, 30)
            got = [m.json for m in sub.on(t.decision)]
            m = scrape(port)
            out = proc.stop()
    finally:
        sub.close()
    assert proc.returncode == 0, out[-3000:]
    assert len(got) == 6
    for outcome in ("accept", "reject"):
        for reason in {d["reason"] for d in got}:
            want = sum(d["decision"] == outcome and d["reason"] == reason for d in got)
            assert m.get(f"edge_decisions_total{{decision={outcome},reason={reason}}}", 0.0) == want
    judged = [d["p_defect"] for d in got if d["p_defect"] is not None]
    assert m["edge_p_defect_count"] == len(judged) == m["edge_inference_seconds_count"]
    assert m["edge_p_defect_sum"] == pytest.approx(sum(judged), abs=1e-6)
    assert m["edge_decision_latency_seconds_count"] == len([d for d in got if d["latency_ms"] is not None])
    assert m["edge_parts_inspected_total"] == 6
    assert m["edge_frames_captured_total"] > 0 and m["edge_camera_connected"] == 1.0
    assert m["edge_camera_bad_frames_total"] == 0  # exported (a camera sending odd buffers counts here)
    assert m["edge_tracking_overruns_total"] == 0  # trigger mode tracks nothing
    assert m["edge_broker_connected"] == 1.0 and m["edge_journal_backlog"] >= 0
    info = m["edge_model_info"]
    assert isinstance(info, dict) and info["sha"] == bundle_fmt.load(BUNDLE).sha256
    assert {d["model"] for d in got} == {info["id"]}
