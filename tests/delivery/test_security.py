"""The shipped broker example (docs/mosquitto: mosquitto.conf and acl), enforced by a real
Mosquitto: only the daemon can publish decisions, only the gate and monitoring can read
them, and no account can take the daemon's session over by using its client id."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto, make_server_certs
from conftest import ROOT
from conftest_mqtt import decision, require_mosquitto, settings
from paho.mqtt.enums import CallbackAPIVersion

from edge.delivery.contract import Topics
from edge.delivery.journal import Journal
from edge.delivery.mqtt import Publisher

PREFIX = "casting/line1/cam1"  # the example ACL's prefix, used as is
USERS = {"edge-cam1": "daemon pw", "gate-line1": "gate pw", "monitor": "monitor pw"}
SHIPPED = ROOT / "docs" / "mosquitto"
DAEMON_ID = "edge-inspect-cam1"  # the id a daemon sends; the monitor tries to claim it


def shipped_config(d: Path, port: int, log: Path) -> str:
    """docs/mosquitto/mosquitto.conf as shipped, with only its port (on loopback) and file paths
    moved into d, plus a log file and this user: every other line is used as it is."""
    moved = {"password_file": d / "passwd", "acl_file": d / "acl", "cafile": d / "ca.pem",
             "certfile": d / "server.pem", "keyfile": d / "server.key", "persistence_location": f"{d}/"}
    out, seen = [], set()
    for line in (SHIPPED / "mosquitto.conf").read_text().splitlines():
        key = line.split()[0] if line.strip() and not line.lstrip().startswith("#") else ""
        if key in moved:
            line, _ = f"{key} {moved[key]}", seen.add(key)
        elif key == "listener":
            line, _ = f"listener {port} 127.0.0.1", seen.add(key)
        out.append(line)
    assert seen == {*moved, "listener"}, f"the shipped config changed shape: adapt this test ({seen})"
    out += [f"user {pwd.getpwuid(os.getuid()).pw_name}", f"log_dest file {log}", "log_type all",
            "connection_messages true"]
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Mosquitto running the shipped mosquitto.conf and acl (TLS, passwords, ids bound to users)."""
    require_mosquitto()
    for tool in ("mosquitto_passwd", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    d = tmp_path_factory.mktemp("acl")
    for i, (user, pw) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(d / "passwd"), user, pw],
                       check=True, capture_output=True)
    shutil.copy(SHIPPED / "acl", d / "acl")
    make_server_certs(d)
    b = Mosquitto(d / "broker")
    b.conf.write_text(shipped_config(d, b.port, b.log_path))
    b.ca = d / "ca.pem"  # type: ignore[attr-defined]
    b.start()
    yield b
    b.stop()


class Client:
    def __init__(self, broker: Mosquitto, user: str | None, password: str | None,
                 client_id: str | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.acks: dict[int, int] = {}
        self.connected = threading.Event()
        self.refused: int | None = None
        self.got = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=str(broker.ca))  # type: ignore[attr-defined]
        if user:
            self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", broker.port)
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
    gate = Client(acl_broker, "gate-line1", USERS["gate-line1"])
    monitor = Client(acl_broker, "monitor", USERS["monitor"])
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
        pub = Publisher(settings(acl_broker.port, PREFIX, username="edge-cam1", password_file=pw,
                                 tls_ca=acl_broker.ca), journal)
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
        c = Client(acl_broker, user, pw)
        try:
            assert not c.connected.wait(2)
            assert c.refused in (134, 135), c.refused  # bad user name or password / not authorized
        finally:
            c.close()


def test_no_account_can_take_the_daemons_session_over(acl_broker: Mosquitto, tmp_path: Path) -> None:
    """The monitoring account logging in with the daemon's client id (5 times) must not disconnect
    it: with use_username_as_clientid the broker gives each login its username as id."""
    t = Topics(PREFIX)
    journal = Journal(tmp_path / "j.db")
    pw = tmp_path / "pw"
    pw.write_text(USERS["edge-cam1"] + "\n")
    pub = Publisher(settings(acl_broker.port, PREFIX, client_id=DAEMON_ID, username="edge-cam1", password_file=pw,
                             tls_ca=acl_broker.ca), journal)  # type: ignore[attr-defined]
    gate = Client(acl_broker, "gate-line1", USERS["gate-line1"])
    try:
        pub.start()
        assert pub.wait_connected(5) and gate.connected.wait(5)
        gate.c.subscribe([(t.status, 1), (t.decision, 1)])
        assert gate.subscribed.wait(5)

        def states() -> list[str]:
            return [json.loads(m.payload)["state"] for m in gate.messages if m.topic == t.status]

        with gate.got:  # the previous test's retained `offline` may come first
            assert gate.got.wait_for(lambda: "online" in states(), 5)
            seen = len(states())
        logins = acl_broker.log().count("as monitor (p5")
        for _ in range(5):
            intruder = Client(acl_broker, "monitor", USERS["monitor"], client_id=DAEMON_ID)
            try:
                assert intruder.connected.wait(5), f"the monitor login itself failed: {intruder.refused}"
            finally:
                intruder.close()
        # A decision acknowledged after the logins went over the daemon's first connection:
        # had a login taken it over, the broker would have closed that connection first.
        pub.publish_decision(decision("AFTER-LOGINS", "reject"))
        assert pub.flush(5)
        with gate.got:
            assert gate.got.wait_for(lambda: any(m.topic == t.decision for m in gate.messages), 5)
        s = pub.stats()
        assert s.get("disconnects", 0) == 0 and s["connects"] == 1, s
        assert s.get("session_taken_over", 0) == 0, s
        assert "offline" not in states()[seen:], states()  # the Will was never published
        assert acl_broker.log().count("as monitor (p5") == logins + 5  # each login got its username as id
    finally:
        pub.stop()
        journal.close()
        gate.close()
