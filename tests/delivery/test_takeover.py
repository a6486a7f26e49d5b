"""A session taken over (another client connecting with the daemon's client id), against a
real Mosquitto that does NOT bind ids to accounts, and the client id a box gets by default."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto
from conftest import ROOT
from conftest_mqtt import (  # noqa: F401 - fixtures
    Collector,
    collectors,
    make_publisher,
    mosquitto,
    prefix,
    require_mosquitto,
)
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import load
from edge.delivery.contract import Topics
from edge.delivery.mqtt import Publisher
from edge.ops.telemetry import Telemetry
from edge.service import mqtt_settings

TAKEOVER = "another client connected with this daemon's client id"


class Intruder:
    """A client using someone else's id, reconnecting on its own like any MQTT tool does."""

    def __init__(self, port: int, client_id: str, protocol: mqtt.MQTTProtocolVersion) -> None:
        self.connects = 0
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.c.on_connect = self._on_connect
        self.c.connect_async("127.0.0.1", port, 5)
        self.c.loop_start()

    def _on_connect(self, *args: Any) -> None:
        self.connects += 1

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _metric(tel: Telemetry, name: str) -> float:
    for fam in text_string_to_metric_families(generate_latest(tel.registry).decode()):
        for s in fam.samples:
            if s.name == name:
                return float(s.value)
    raise AssertionError(f"{name} not exported")


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_client_taking_the_daemons_id_is_reported(
        mosquitto: Mosquitto, prefix: str, make_publisher: Callable[..., Publisher],  # noqa: F811
        collectors: Callable[..., Collector], caplog: pytest.LogCaptureFixture, protocol: str) -> None:  # noqa: F811
    t = Topics(prefix)
    cid = f"daemon-{uuid.uuid4().hex[:8]}"
    keepalive = 2  # the suspicion window is one keepalive: keep the test short
    with caplog.at_level(logging.WARNING, "edge.delivery"):
        pub = make_publisher(mosquitto.port, prefix, client_id=cid, protocol=protocol, keepalive=keepalive)
        assert pub.wait_connected(5)
        time.sleep(keepalive + 0.5)  # a long-lived connection: the first drop alone proves nothing
        version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        intruder = Intruder(mosquitto.port, cid, version)
        try:
            assert _wait(lambda: pub.stats().get("session_taken_over", 0) >= 1, 15), pub.stats()
        finally:
            intruder.close()
        assert pub.wait_connected(5)  # the daemon has its id back once the intruder is gone
    s = pub.stats()
    assert s["disconnects"] >= 2 and s["session_taken_over"] >= 1, s
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and TAKEOVER in r.getMessage()]
    assert errors, caplog.text
    assert errors[0].client_id == cid and errors[0].protocol == protocol  # type: ignore[attr-defined]
    # Surfaced: the retained status's mqtt block (sent on each connect) and the metric.
    sub = collectors(mosquitto.port, [t.status])
    assert sub.wait(lambda ms: any(m.json.get("mqtt", {}).get("session_taken_over", 0) >= 1 for m in ms), 5)
    tel = Telemetry(lambda: {"mqtt": pub.stats()})
    assert _metric(tel, "edge_mqtt_session_taken_over_total") == s["session_taken_over"]


def test_a_broker_restart_is_not_a_takeover(tmp_path: Path, prefix: str,  # noqa: F811
                                            make_publisher: Callable[..., Publisher]) -> None:
    require_mosquitto()
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        pub = make_publisher(broker.port, prefix, keepalive=2)
        assert pub.wait_connected(5)
        time.sleep(2.5)  # past one keepalive, as any connection that has been up a while
        broker.restart()
        assert _wait(lambda: pub.stats().get("connects", 0) >= 2, 10), pub.stats()
        s = pub.stats()
        assert s["disconnects"] == 1 and s.get("session_taken_over", 0) == 0, s
    finally:
        broker.stop()


def test_the_shipped_config_gives_each_box_its_own_client_id() -> None:
    """Two boxes on the shipped config.yaml must not share a client id (they would knock each
    other off the broker): unset, it is edge-inspect-<hostname> (docs/mqtt.md)."""
    cfg = load(ROOT / "config.yaml")
    settings = mqtt_settings(cfg, "127.0.0.1", 1883)
    assert settings.effective_client_id == f"edge-inspect-{socket.gethostname()}"
    assert "\n  client_id:" not in (ROOT / "config.yaml").read_text()  # documented, commented out

