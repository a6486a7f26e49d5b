"""A stand-in daemon run as a subprocess, so tests can SIGKILL it (Last Will, journal crash).

    python tests/daemon_proc.py PORT PREFIX JOURNAL

Answers each trigger with a decision (`reject` for part ids starting with "bad",
none at all for ids starting with "silent"), the way the real daemon hands triggers
from the MQTT thread to its inspection thread through a queue. Prints READY once
connected, then one line per decision's seq.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.delivery.contract import Trigger
from edge.delivery.journal import Journal
from edge.delivery.mqtt import Publisher
from edge.delivery.mqtt_settings import MqttSettings


def main() -> int:
    port, prefix, journal_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = MqttSettings(host="127.0.0.1", port=port, prefix=prefix, client_id=f"daemon-{prefix}",
                            keepalive=5, reconnect_min_delay_s=0.1, reconnect_max_delay_s=0.5,
                            decision_deadline_s=5.0)
    journal = Journal(journal_path)
    pub = Publisher(settings, journal, lambda: {"model": "0123456789ab", "counters": {"parts": 0}})
    triggers: queue.Queue[Trigger] = queue.Queue()
    pub.on_trigger(triggers.put)
    pub.start()
    if not pub.wait_ready(10):
        return 1
    print("READY", flush=True)
    while True:
        t = triggers.get()
        if t.part_id.startswith("silent"):
            continue
        verdict = "reject" if t.part_id.startswith("bad") else "accept"
        seq = pub.publish_decision({"part_id": t.part_id, "frame_ts": time.time(), "decision": verdict,
                                    "p_defect": 0.9 if verdict == "reject" else 0.1, "threshold": 0.5,
                                    "reason": "model", "model": "0123456789ab", "latency_ms": 1.0})
        print(seq, flush=True)


if __name__ == "__main__":
    sys.exit(main())
