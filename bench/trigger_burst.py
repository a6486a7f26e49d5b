"""Trigger burst: far more triggers than the daemon can inspect, and what becomes of each.

    .venv/bin/python bench/trigger_burst.py [--triggers 5000] [--over 5] [--queue 1000]

The real daemon (`python -m edge.cli`, trigger mode, simulated line) on a private mosquitto
whose per-client queue is `--queue` messages (mosquitto's default is 1000). A sender
publishes `--triggers` triggers (QoS 1, with ts) spread over `--over` seconds; a
subscriber records /decision and /decision/late with arrival times.

Printed: triggers sent; answered on /decision and on /decision/late; never answered;
answered twice; /decision arrivals after their own `deadline` (must be 0 beyond the MQTT
expiry's 1 s granularity, see docs/mqtt.md); how many were the daemon's explicit
`fault:overloaded`; and the inspection rate it sustained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from edge.delivery.broker import mosquitto_path

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "bench/burst/cam1"


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Recorder:
    def __init__(self, port: int) -> None:
        self.got: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="burst-sub", protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, *a: c.subscribe([(f"{PREFIX}/decision", 1), (f"{PREFIX}/decision/late", 1)])
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(10)

    def _on(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((time.time(), msg.topic, json.loads(msg.payload)))


def start_broker(workdir: Path, queue: int) -> tuple[subprocess.Popen[bytes], int]:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = workdir / "mosquitto.conf"
    user = f"user {os.environ.get('USER', 'root')}\n" if os.getuid() == 0 else ""
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{user}max_queued_messages {queue}\n")
    proc = subprocess.Popen([mosquitto_path() or "mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def run(triggers: int, over_s: float, queue: int, deadline_s: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="burst-"))
    broker, port = start_broker(work, queue)
    cfg = {"model": {"bundle": str(ROOT / "models" / "casting-cnn")},
           "inspect": {"mode": "trigger"},
           "mqtt": {"host": "127.0.0.1", "port": port, "prefix": PREFIX, "client_id": "burst-daemon",
                    "decision_deadline_s": deadline_s},
           "journal": {"path": str(work / "journal.sqlite")}, "audit": {"dir": str(work / "audit")}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    log_file = (work / "daemon.log").open("w")  # a file: a pipe nobody reads would stall the daemon's logging
    daemon = subprocess.Popen([sys.executable, "-m", "edge.cli", "--config", str(work / "config.yaml"), "--quiet"],
                              cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    rec = Recorder(port)
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="burst-sender", protocol=mqtt.MQTTv5)
    sender.max_queued_messages_set(0)
    sender.max_inflight_messages_set(1000)
    sender.connect("127.0.0.1", port)
    sender.loop_start()
    # the daemon is up once it answers a first trigger
    end = time.monotonic() + 60
    while time.monotonic() < end and not rec.got:
        sender.publish(f"{PREFIX}/trigger", json.dumps({"part_id": f"warm-{time.monotonic()}", "ts": time.time()}), 1)
        time.sleep(0.5)
    time.sleep(1.0)
    with rec.lock:
        rec.got.clear()
    t0 = time.monotonic()
    for i in range(triggers):
        due = t0 + i * over_s / triggers
        while time.monotonic() < due:
            time.sleep(0.0005)
        sender.publish(f"{PREFIX}/trigger", json.dumps({"part_id": f"b{i}", "ts": time.time()}), qos=1)
    sent_s = time.monotonic() - t0
    # wait until nothing new arrives for a while
    last, n = time.monotonic(), 0
    while time.monotonic() - last < 5 + deadline_s:
        time.sleep(0.5)
        with rec.lock:
            if len(rec.got) != n:
                n, last = len(rec.got), time.monotonic()
    daemon.terminate()
    daemon.wait(timeout=60)
    log_file.close()
    out = (work / "daemon.log").read_text()
    sender.disconnect()
    rec.c.disconnect()
    broker.terminate()
    broker.wait()
    burst = [(t, topic, d) for t, topic, d in rec.got if d["part_id"].startswith("b")]
    on_time = [(t, d) for t, topic, d in burst if topic.endswith("/decision")]
    late = [d for t, topic, d in burst if topic.endswith("/late")]
    answered = Counter(d["part_id"] for _t, _topic, d in burst)
    after = [t - _ts(d["deadline"]) for t, d in on_time if t > _ts(d["deadline"])]
    reasons = Counter(d["reason"] for _t, _topic, d in burst)
    return {"triggers": triggers, "sent_in_s": round(sent_s, 2), "answered_decision": len(on_time),
            "answered_late": len(late), "never_answered": triggers - len(answered),
            "answered_twice": sum(1 for v in answered.values() if v > 1),
            "decision_after_deadline": len(after),
            "decision_after_deadline_max_s": round(max(after), 3) if after else 0.0,
            "overloaded_answers": reasons.get("fault:overloaded", 0),
            "model_answers": reasons.get("model", 0), "reasons": dict(reasons),
            "daemon_log": str(work / "daemon.log"), "daemon_stopped": out.splitlines()[-1:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triggers", type=int, default=5000)
    ap.add_argument("--over", type=float, default=5.0, help="seconds the burst is spread over")
    ap.add_argument("--queue", type=int, default=1000, help="mosquitto max_queued_messages")
    ap.add_argument("--deadline", type=float, default=2.0, help="mqtt.decision_deadline_s")
    a = ap.parse_args()
    r = run(a.triggers, a.over, a.queue, a.deadline)
    for k, v in r.items():
        print(f"{k:32s} {v}")


if __name__ == "__main__":
    main()
