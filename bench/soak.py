"""Soak: the real daemon at line rate for a while, with broker outages on a schedule.

    .venv/bin/python bench/soak.py [--duration 120] [--outage-every 30] [--outage-for 4] [--fps 30]

A looping video of a simulated line (dataset test images, or drawn parts) is inspected
in continuous mode by `python -m edge.cli` (a separate process); a local mosquitto with
persistence is stopped and restarted on the schedule; a persistent-session subscriber
records everything on {prefix}/decision and {prefix}/decision/late. At the end the
journal is the ground truth of what the daemon decided.

Printed: parts decided, decisions published / delivered / late, lost (in the journal
but never received where its state says: must be 0), duplicates (a seq received twice
on the gate's topic, broker DUP re-deliveries aside: must be 0), pending at exit, daemon
RSS at start vs end, and latency percentiles of decisions delivered live.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import yaml
from daemon_latency import PREFIX, parts, proc_mb
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.delivery.broker import LocalBroker
from edge.inference import bundle as bundle_fmt
from edge.vision.simulate import (
    DATASET_BACKDROP_LEVEL,
    DEMO_CONTEXT,
    SimulatedLine,
    write_video,
)

ROOT = Path(__file__).resolve().parent.parent


class Subscriber:
    """Persistent session: nothing is missed across broker restarts."""

    def __init__(self, port: int) -> None:
        self.received: list[tuple[float, str, dict[str, Any], bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-sub", protocol=mqtt.MQTTv5)
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect = lambda c, *a: c.subscribe([(f"{PREFIX}/decision", 1), (f"{PREFIX}/decision/late", 1)])
        self.c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.c.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((time.time(), msg.topic, json.loads(msg.payload), bool(msg.dup)))

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=bundle_fmt.DEFAULT_BUNDLE)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--outage-every", type=float, default=30.0, help="seconds between broker outages (0: none)")
    ap.add_argument("--outage-for", type=float, default=4.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--parts", type=int, default=8)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    imgs, labels = parts(args.parts)
    line = SimulatedLine(imgs, labels, speed_px=30, diameter_px=300, spacing_px=450, y_jitter=40,
                         belt_level=DATASET_BACKDROP_LEVEL, context=DEMO_CONTEXT, seed=2)
    write_video(work / "line.avi", (f for f, _t in line), fps=args.fps)

    broker = LocalBroker(persistence=True)
    broker.start()
    sub = Subscriber(broker.port)
    cfg = {
        "model": {"bundle": str(args.model.resolve())},
        "camera": {"source": str(work / "line.avi"), "loop": True},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": PREFIX, "decision_deadline_s": 5.0,
                 "keepalive_s": 5},
        "journal": {"path": str(work / "journal.sqlite")},
        "audit": {"dir": str(work / "audit"), "max_mb": 20},
        "log_level": "WARNING",
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "--config", str(work / "config.yaml"), "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    time.sleep(5)
    rss_start = proc_mb(proc.pid, "VmRSS") or float("nan")
    outages = 0
    next_outage = t0 + args.outage_every if args.outage_every > 0 else float("inf")
    while time.monotonic() - t0 < args.duration and proc.poll() is None:
        if time.monotonic() >= next_outage:
            broker.stop(cleanup=False)
            time.sleep(args.outage_for)
            broker.start()
            outages += 1
            next_outage = time.monotonic() + args.outage_every
        time.sleep(0.2)
    rss_end = proc_mb(proc.pid, "VmRSS") or float("nan")
    peak = proc_mb(proc.pid) or float("nan")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    time.sleep(2)  # let the last acknowledgements reach the subscriber
    sub.close()
    broker.stop()
    if proc.returncode != 0:
        print(out[-3000:], file=sys.stderr)
        return 1

    db = sqlite3.connect(work / "journal.sqlite")
    rows = db.execute("SELECT seq, state FROM decisions").fetchall()
    db.close()
    with sub.lock:
        received = list(sub.received)
    on_gate: dict[int, int] = {}
    on_late: set[int] = set()
    live_latency = []
    for t, topic, body, dup in received:
        if topic.endswith("/late"):
            on_late.add(body["seq"])
            continue
        if not dup:
            on_gate[body["seq"]] = on_gate.get(body["seq"], 0) + 1
        ms = (t - datetime.fromisoformat(body["frame_ts"].replace("Z", "+00:00")).timestamp()) * 1000
        if ms < 1000:
            live_latency.append(ms)
    states = {seq: state for seq, state in rows}
    lost = [s for s, st in states.items() if (st == "delivered" and s not in on_gate) or
            (st == "late" and s not in on_late)]
    dups = [s for s, n in on_gate.items() if n > 1]
    pending = [s for s, st in states.items() if st == "pending"]
    n = len(states)
    print(f"soak: {args.duration:.0f} s at {args.fps:g} fps, {outages} broker outages of {args.outage_for:g} s")
    print(f"decisions journaled {n}: delivered {sum(st == 'delivered' for st in states.values())}, "
          f"late {sum(st == 'late' for st in states.values())}, pending at exit {len(pending)}")
    print(f"lost {len(lost)}  duplicates {len(dups)}")
    print(f"daemon RSS {rss_start:.0f} MB after 5 s -> {rss_end:.0f} MB at end (peak {peak:.0f} MB)")
    if live_latency:
        q = np.percentile(live_latency, [50, 99])
        print(f"latency of live deliveries (capture -> subscriber): p50 {q[0]:.1f} ms  p99 {q[1]:.1f} ms  "
              f"(n={len(live_latency)})")
    return 0 if not lost and not dups else 1


if __name__ == "__main__":
    sys.exit(main())
