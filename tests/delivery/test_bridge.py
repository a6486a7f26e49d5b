"""The plant broker: the box's Mosquitto, configured by the shipped docs/mosquitto/bridge.conf,
bridged to a central Mosquitto; the real daemon publishes to the box's broker while the
central one goes away and comes back. A gate-side subscriber on the central broker must get
every journaled decision exactly once (docs/plant-broker.md)."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest
from broker import Mosquitto
from conftest import ROOT
from conftest_mqtt import Collector, require_mosquitto
from daemon_run import BUNDLE, DaemonProcess, drawn_video, write_config

from edge.delivery.contract import Topics
from edge.delivery.journal import Journal

PREFIX = "acme/casting/line1/cam1"  # site/area/line/cam, as bridge.conf bridges it


def box_broker_conf(central_port: int) -> str:
    """The shipped bridge.conf, pointed at the test's central broker; its persistence lines are the
    test broker's own (same settings, a private folder)."""
    text = (ROOT / "docs" / "mosquitto" / "bridge.conf").read_text()
    text = re.sub(r"^address .*$", f"address 127.0.0.1:{central_port}", text, flags=re.MULTILINE)
    return "\n".join(line for line in text.splitlines() if not line.startswith(("persistence", "autosave")))


@pytest.mark.parametrize("outage", ["stop", "crash"])
def test_a_central_broker_outage_loses_and_duplicates_nothing(tmp_path: Path, outage: str) -> None:
    require_mosquitto()
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")
    t = Topics(PREFIX)
    central = Mosquitto(tmp_path / "central", persistence=True).start()
    box = Mosquitto(tmp_path / "box", persistence=True, extra=box_broker_conf(central.port)).start()
    # The gate on the central broker: exactly-once subscription, session kept across its restarts.
    gate = Collector(central.port, [t.decision, t.late], session=True, qos=2)
    try:
        cfg = write_config(tmp_path, box.port, PREFIX, drawn_video(tmp_path), camera={"loop": True})
        with DaemonProcess(cfg) as proc:
            assert gate.wait(lambda ms: len(ms) >= 2, 90), "nothing crossed the bridge\n" + box.log()[-2000:]
            with Journal(tmp_path / "journal.sqlite") as j:
                before = j.last_seq
                central.kill() if outage == "crash" else central.stop()
                end = time.monotonic() + 60  # the daemon goes on deciding: the box's broker queues them
                while j.last_seq < before + 3 and time.monotonic() < end:
                    time.sleep(0.2)
                assert j.last_seq >= before + 3, "no decisions during the outage"
            central.start()
            with Journal(tmp_path / "journal.sqlite") as j:
                target = j.last_seq + 2  # and some after it
            assert gate.wait(lambda ms: any(m.json["seq"] >= target for m in ms), 90), box.log()[-2000:]
            out = proc.stop()
        assert proc.returncode == 0, out[-3000:]
        with Journal(tmp_path / "journal.sqlite") as j:
            total = j.counts()["total"]
            assert j.counts()["pending"] == 0  # all acknowledged by the box's broker
        assert gate.wait(lambda ms: {m.json["seq"] for m in ms} >= set(range(1, total + 1)), 30), (
            sorted({m.json["seq"] for m in gate.messages}), total)
        time.sleep(1.0)  # a duplicate would be on its way by now
        seqs = Counter(m.json["seq"] for m in gate.messages)
    finally:
        gate.close()
        box.stop()
        central.stop()
    assert sorted(seqs) == list(range(1, total + 1))  # nothing lost
    assert [s for s, n in seqs.items() if n > 1] == []  # nothing twice, on /decision and /late together
    assert all(m.topic == t.decision for m in gate.messages)  # a short outage: all still in time
