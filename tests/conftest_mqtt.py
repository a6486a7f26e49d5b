"""MQTT fixtures and helpers for the messaging tests (import the fixtures you use).

Every test gets its own topic prefix, so one broker per module is enough and retained
messages never leak between tests. Waiting is done on conditions with timeouts,
never on fixed sleeps: this suite shares a small machine with training jobs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import MOSQUITTO, Mosquitto, have_mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.delivery.journal import Journal
from edge.delivery.mqtt import Publisher
from edge.delivery.mqtt_settings import MqttSettings

FAST = {"keepalive": 5, "reconnect_min_delay_s": 0.1, "reconnect_max_delay_s": 0.4, "connect_timeout_s": 2.0,
        "resend_interval_s": 1.0, "flush_timeout_s": 2.0}


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    expiry: int | None
    dup: bool = False  # the broker re-sending to this subscriber (its own at-least-once)

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Collector:
    """A subscriber that records everything and lets tests wait for what they expect."""

    port: int
    topics: list[str]
    protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5
    session: bool = False  # persistent session (survives a broker restart with persistence)
    qos: int = 1  # of the subscriptions
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        cid = f"collector-{uuid.uuid4().hex[:10]}"
        kw: dict[str, Any] = {} if self.protocol == mqtt.MQTTv5 else {"clean_session": not self.session}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=self.protocol, **kw)
        self.client.reconnect_delay_set(0.1, 0.4)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        props = None
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300 if self.session else 0
            self.client.connect_async("127.0.0.1", self.port, 5, clean_start=not self.session, properties=props)
        else:
            self.client.connect_async("127.0.0.1", self.port, 5)
        self.client.loop_start()
        assert self.subscribed.wait(5), "collector could not subscribe"

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(t, self.qos) for t in self.topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        expiry = getattr(msg.properties, "MessageExpiryInterval", None) if msg.properties else None
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, expiry,
                                          bool(msg.dup)))
            self._cond.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait(self, predicate: Callable[[list[Received]], bool], timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout)

    def wait_count(self, topic: str, n: int, timeout: float = 5.0) -> list[Received]:
        assert self.wait(lambda ms: sum(m.topic == topic for m in ms) >= n, timeout), \
            f"expected {n} messages on {topic}, got {len(self.on(topic))}"
        return self.on(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str, timeout: float = 3.0) -> Received | None:
    """The retained message on a topic, as a brand-new subscriber sees it (None if none)."""
    c = Collector(port, [topic])
    try:
        c.wait(lambda ms: any(m.topic == topic for m in ms), timeout)
        got = c.on(topic)
        return got[0] if got else None
    finally:
        c.close()


def settings(port: int, prefix: str, **over: Any) -> MqttSettings:
    kw = {"host": "127.0.0.1", "port": port, "prefix": prefix, "client_id": f"pub-{uuid.uuid4().hex[:8]}",
          **FAST, **over}
    return MqttSettings(**kw)


def decision(part_id: str, verdict: str = "accept", frame_ts: float | str | None = None, **over: Any) -> dict[str, Any]:
    d = {"part_id": part_id, "frame_ts": time.time() if frame_ts is None else frame_ts, "decision": verdict,
         "p_defect": 0.12 if verdict == "accept" else 0.91, "threshold": 0.5, "reason": "model",
         "model": "0123456789ab", "latency_ms": 12.5}
    d.update(over)
    return d


def require_mosquitto() -> None:
    """Skip (with the reason) where mosquitto is not installed; CI installs it (.ci/run)."""
    if not have_mosquitto():
        pytest.skip(f"mosquitto not found at {MOSQUITTO} (apt-get install mosquitto)")


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    require_mosquitto()
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex[:10]}/cam1"


@pytest.fixture
def make_publisher(tmp_path: Path) -> Iterator[Callable[..., Publisher]]:
    """make_publisher(port, prefix, journal=None, status_fn=None, **settings) -> started Publisher."""
    made: list[tuple[Publisher, Journal, bool]] = []

    def make(port: int, prefix: str, journal: Journal | None = None,
             status_fn: Callable[[], dict[str, Any]] | None = None, start: bool = True, **over: Any) -> Publisher:
        own = journal is None
        j = journal or Journal(tmp_path / f"journal-{len(made)}.db")
        pub = Publisher(settings(port, prefix, **over), j, status_fn)
        made.append((pub, j, own))
        if start:
            pub.start()
        return pub

    yield make
    for pub, j, own in made:
        pub.stop()
        if own:
            j.close()


@pytest.fixture
def collectors() -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def make(port: int, topics: list[str], **kw: Any) -> Collector:
        c = Collector(port, topics, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
