"""A trigger burst far beyond what the daemon can inspect (issue 18.6): every trigger answered
exactly once, the excess with an explicit `fault:overloaded` while the gate still waits, nothing
on /decision after its deadline, and a log that says so without a line per part.
Real daemon process, real Mosquitto, a real video in trigger mode."""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import closing
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto
from conftest_mqtt import Collector, mosquitto  # noqa: F401 - fixture
from daemon_run import DaemonProcess, drawn_video, write_config
from paho.mqtt.enums import CallbackAPIVersion

from edge.delivery.contract import Topics

BURST = 800
DEADLINE_S = 2.0


@pytest.fixture(scope="module")
def drawn_line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return drawn_video(tmp_path_factory.mktemp("drawn"))


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_trigger_burst_is_answered_once_each_in_time_or_on_the_late_topic(
        mosquitto: Mosquitto, tmp_path: Path, drawn_line: Path) -> None:  # noqa: F811
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    config = write_config(tmp_path, mosquitto.port, prefix, drawn_line, camera={"loop": True},
                          inspect={"mode": "trigger"}, mqtt={"decision_deadline_s": DEADLINE_S})
    sub = Collector(mosquitto.port, [t.decision, t.late])
    arrivals: dict[int, float] = {}
    sub.client.on_message = lambda c, u, m, _orig=sub._on_message: (arrivals.setdefault(id(m), time.time()),
                                                                    _orig(c, u, m))
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"burst-{tmp_path.name[-8:]}",
                         protocol=mqtt.MQTTv5)
    sender.max_inflight_messages_set(1000)
    sender.connect("127.0.0.1", mosquitto.port)
    sender.loop_start()
    received: list[tuple[float, str, dict]] = []
    sub.client.on_message = lambda c, u, m: received.append((time.time(), m.topic, json.loads(m.payload)))
    with closing(sub), DaemonProcess(config) as proc:
        end = time.monotonic() + 60
        while time.monotonic() < end and not received:  # up and answering
            sender.publish(t.trigger, json.dumps({"part_id": f"warm-{time.monotonic()}", "ts": time.time()}), 1)
            time.sleep(0.5)
        assert received, "the daemon never answered a trigger"
        t0 = time.monotonic()
        for i in range(BURST):
            while time.monotonic() < t0 + i / 1000:  # 1000 triggers per second
                time.sleep(0.0005)
            sender.publish(t.trigger, json.dumps({"part_id": f"b{i}", "ts": time.time()}), qos=1)
        end = time.monotonic() + 60
        while time.monotonic() < end and len({d["part_id"] for _a, _t, d in received if d["part_id"][0] == "b"}) < BURST:
            time.sleep(0.2)
        time.sleep(1.0)  # anything answered twice would arrive now
        out = proc.stop()
    sender.disconnect()
    sender.loop_stop()
    burst = [(a, topic, d) for a, topic, d in received if d["part_id"].startswith("b")]
    answers = Counter(d["part_id"] for _a, _t, d in burst)
    assert len(answers) == BURST, f"{BURST - len(answers)} triggers never answered"
    assert max(answers.values()) == 1, [p for p, n in answers.items() if n > 1][:5]
    on_time = [(a, d) for a, topic, d in burst if topic == t.decision]
    assert all(a <= _epoch(d["deadline"]) for a, d in on_time), \
        max(a - _epoch(d["deadline"]) for a, d in on_time)
    reasons = Counter(d["reason"] for _a, _t, d in burst)
    assert reasons["fault:overloaded"] > BURST // 2, reasons  # the explicit answer, not silence or lateness
    overloaded_on_time = sum(1 for _a, d in on_time if d["reason"] == "fault:overloaded")
    assert overloaded_on_time > BURST // 2, (overloaded_on_time, reasons)  # told while the gate still waits
    assert all(d["decision"] == "reject" for _a, _t, d in burst if d["reason"] != "model")
    lines = [ln for ln in out.splitlines() if "overloaded: triggers arrive faster" in ln]
    assert 1 <= len(lines) <= 10, len(lines)  # said, with counts, not once per part
