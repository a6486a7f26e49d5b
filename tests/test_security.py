"""The shipped broker ACL example, enforced by a real Mosquitto: only the daemon can
publish decisions, only the gate and monitoring can read them."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto
from conftest import ROOT
from conftest_mqtt import decision, require_mosquitto, settings
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import Topics
from edge.journal import Journal
from edge.publish import Publisher

PREFIX = "casting/line1/cam1"  # the example ACL's prefix, used as is
USERS = {"edge-cam1": "daemon pw", "gate-line1": "gate pw", "monitor": "monitor pw"}


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    require_mosquitto()
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    d = tmp_path_factory.mktemp("acl")
    for i, (user, pw) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(d / "passwd"), user, pw],
                       check=True, capture_output=True)
    shutil.copy(ROOT / "docs" / "mosquitto" / "acl", d / "acl")
    b = Mosquitto(d / "broker", allow_anonymous=False, password_file=d / "passwd", extra=f"acl_file {d / 'acl'}")
    b.start()
    yield b
    b.stop()


class Client:
    def __init__(self, port: int, user: str | None, password: str | None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.acks: dict[int, int] = {}
        self.connected = threading.Event()
        self.refused: int | None = None
        self.got = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        if user:
            self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self.refused = rc.value
        else:
            self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.got:
            self.messages.append(msg)
            self.got.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        with self.got:
            self.acks[mid] = rc.value
            self.got.notify_all()

    def publish(self, topic: str, payload: str) -> int:
        """QoS 1 publish; returns the broker's PUBACK reason code (0 = accepted, 135 = not authorized)."""
        info = self.c.publish(topic, payload, qos=1)
        with self.got:
            assert self.got.wait_for(lambda: info.mid in self.acks, 5), "no PUBACK"
            return self.acks[info.mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_only_the_daemon_publishes_decisions_and_only_gate_and_monitor_read_them(
        acl_broker: Mosquitto, tmp_path: Path) -> None:
    t = Topics(PREFIX)
    gate = Client(acl_broker.port, "gate-line1", USERS["gate-line1"])
    monitor = Client(acl_broker.port, "monitor", USERS["monitor"])
    try:
        assert gate.connected.wait(5) and monitor.connected.wait(5)
        gate.c.subscribe(t.decision, qos=1)
        monitor.c.subscribe(f"{PREFIX}/#", qos=1)
        assert gate.subscribed.wait(5) and monitor.subscribed.wait(5)
        # A forged accept from the gate's own (or a stolen) account is refused by the broker.
        forged = json.dumps(decision("FORGED-1", "accept"))
        assert gate.publish(t.decision, forged) == 135
        assert monitor.publish(t.decision, forged) == 135
        # The daemon's account publishes through the real publisher.
        journal = Journal(tmp_path / "j.db")
        pw = tmp_path / "pw"
        pw.write_text(USERS["edge-cam1"] + "\n")
        pub = Publisher(settings(acl_broker.port, PREFIX, username="edge-cam1", password_file=pw), journal)
        pub.start()
        try:
            assert pub.wait_connected(5)
            pub.publish_decision(decision("REAL-1", "reject"))
            assert pub.flush(5)
        finally:
            pub.stop()
            journal.close()
        with gate.got:
            assert gate.got.wait_for(lambda: any(m.topic == t.decision for m in gate.messages), 5)
        with monitor.got:
            assert monitor.got.wait_for(lambda: any(m.topic == t.decision for m in monitor.messages), 5)
        for who in (gate, monitor):
            ids = [json.loads(m.payload)["part_id"] for m in who.messages if m.topic == t.decision]
            assert ids == ["REAL-1"], ids
        # The gate may trigger; monitoring may not.
        assert gate.publish(t.trigger, json.dumps({"part_id": "P-1"})) == 0
        assert monitor.publish(t.trigger, json.dumps({"part_id": "P-2"})) == 135
    finally:
        gate.close()
        monitor.close()


def test_anonymous_and_wrong_password_are_refused(acl_broker: Mosquitto) -> None:
    for user, pw in ((None, None), ("edge-cam1", "guess")):
        c = Client(acl_broker.port, user, pw)
        try:
            assert not c.connected.wait(2)
            assert c.refused in (134, 135), c.refused  # bad user name or password / not authorized
        finally:
            c.close()
