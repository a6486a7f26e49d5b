"""The daemon's retained status, read from the broker: camera, drift, model, shadow, counters.

Subscribe only: this client never publishes (it has no Will either), so nothing the page
does reaches a gate. Its id is its own (`edge-hmi-<host>-<pid>`): sharing the daemon's id
would disconnect the daemon.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from edge.delivery.contract import Topics
from edge.delivery.mqtt_settings import MqttConfigError, MqttSettings, make_client
from edge.hmi.config import Mqtt

log = logging.getLogger(__name__)


class StatusWatch:
    def __init__(self, cfg: Mqtt) -> None:
        self.cfg = cfg
        self.topic = Topics(cfg.prefix).status
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._received = 0.0
        self.connected = False
        self.error: str | None = None
        self._client: mqtt.Client | None = None

    def start(self) -> None:
        c = self.cfg
        if c.host is None:
            return
        tls = c.tls
        settings = MqttSettings(
            host=c.host, port=c.port, prefix=c.prefix, protocol="3.1.1", username=c.username,
            password_file=c.password_file, client_id=f"edge-hmi-{socket.gethostname()}-{os.getpid()}",
            tls=tls is not None, tls_ca=tls.ca_file if tls else None, tls_cert=tls.cert_file if tls else None,
            tls_key=tls.key_file if tls else None, tls_insecure=bool(tls and tls.insecure),
            reconnect_min_delay_s=0.5, reconnect_max_delay_s=10.0)
        client = make_client(settings, settings.client_id, "3.1.1", settings.read_password())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.connect_async(c.host, c.port, 15)
        client.loop_start()
        self._client = client

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            self.error = f"broker refused the page's connection: {rc}"
            return
        self.connected, self.error = True, None
        client.subscribe(self.topic, qos=1)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any = None, _p: Any = None) -> None:
        self.connected = False
        self.error = f"broker connection lost ({rc})"

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            data = json.loads(msg.payload[:256 * 1024])
        except ValueError:
            data = None
        if not isinstance(data, dict):
            log.warning("status message is not a JSON object", extra={"topic": msg.topic})
            return
        with self._lock:
            self._status, self._received = data, time.time()

    def snapshot(self) -> tuple[dict[str, Any] | None, float]:
        with self._lock:
            return self._status, self._received

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()


__all__ = ["MqttConfigError", "StatusWatch"]
