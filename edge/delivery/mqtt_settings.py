"""How the station reaches an MQTT broker: the settings (validated, secrets read only at
start), the TLS context and the paho client they make. Shared by the publisher and the gate."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge.delivery.contract import DEFAULT_PREFIX, DEFAULT_TRIGGER_MAX_BYTES, ContractError, Topics, check_prefix

log = logging.getLogger(__name__)

Protocol = Literal["5", "3.1.1", "auto"]
MQTT_STRING_MAX = 65535  # a UTF-8 string field in an MQTT packet has a 2-byte length


class MqttConfigError(ValueError):
    """Settings that cannot work (missing password source, unreadable TLS files...)."""


@dataclass(frozen=True)
class MqttSettings:
    """Everything the publisher needs to reach the broker; no secrets are stored here.

    The password is named by `password_file` or `password_env` and read at start(),
    so a settings object can be logged or repr()'d without leaking it.
    """

    host: str = "localhost"
    port: int = 1883
    prefix: str = DEFAULT_PREFIX
    client_id: str = ""  # "" -> edge-inspect-<hostname>
    protocol: Protocol = "auto"
    keepalive: int = 15
    username: str | None = None
    password_file: Path | str | None = None
    password_env: str | None = None
    tls: bool = False  # also implied by any tls_* file
    tls_ca: Path | str | None = None  # None -> the system CA store
    tls_cert: Path | str | None = None
    tls_key: Path | str | None = None
    tls_insecure: bool = False  # skip certificate AND hostname verification (never on a line)
    decision_deadline_s: float = 2.0
    reconnect_min_delay_s: float = 0.5
    reconnect_max_delay_s: float = 30.0
    connect_timeout_s: float = 5.0
    trigger_max_bytes: int = DEFAULT_TRIGGER_MAX_BYTES
    trigger_dedup: int = 4096  # remember this many trigger part_ids to answer each once
    max_inflight: int = 100  # unacknowledged QoS 1 messages the resender allows itself
    resend_interval_s: float = 5.0  # also retry pending rows this often while connected
    flush_timeout_s: float = 2.0  # stop(): wait this long for PUBACKs and the offline status
    # The retained `online` expires (MQTT 5) unless refreshed within this: after a broker crash
    # that outlives the daemon, a persisted `online` must not speak for a dead daemon. 0 = never.
    online_expiry_s: float = 0.0

    def __post_init__(self) -> None:
        try:
            check_prefix(self.prefix)
        except ContractError as exc:
            raise MqttConfigError(str(exc)) from None
        if self.protocol not in ("5", "3.1.1", "auto"):
            raise MqttConfigError(f"protocol must be '5', '3.1.1' or 'auto', got {self.protocol!r}")
        if not 0 < self.port < 65536:
            raise MqttConfigError(f"port must be 1..65535, got {self.port}")
        if self.keepalive < 1:
            raise MqttConfigError(f"keepalive must be >= 1 s, got {self.keepalive}")
        if self.password_file is not None and self.password_env is not None:
            raise MqttConfigError("give password_file or password_env, not both")
        if (self.password_file or self.password_env) and not self.username:
            raise MqttConfigError("a password needs a username")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise MqttConfigError("tls_cert and tls_key go together (client certificate and its key)")
        for name in ("decision_deadline_s", "reconnect_min_delay_s", "connect_timeout_s", "flush_timeout_s",
                     "resend_interval_s"):
            if not getattr(self, name) > 0:
                raise MqttConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.reconnect_max_delay_s < self.reconnect_min_delay_s:
            raise MqttConfigError("reconnect_max_delay_s must be >= reconnect_min_delay_s")
        for name in ("client_id", "username"):  # MQTT strings: paho's thread dies on one it cannot pack
            value = getattr(self, name) or ""
            if len(value.encode("utf-8", "surrogatepass")) > MQTT_STRING_MAX or any(ord(c) < 32 or c == "\x7f" for c in value):
                raise MqttConfigError(f"{name}: at most {MQTT_STRING_MAX} bytes of UTF-8 without control characters "
                                      f"(got {len(value)} characters)")
        if self.trigger_max_bytes < 16 or self.trigger_dedup < 1 or self.max_inflight < 1:
            raise MqttConfigError("trigger_max_bytes >= 16, trigger_dedup >= 1 and max_inflight >= 1 are required")

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"edge-inspect-{socket.gethostname()}"

    @property
    def tls_enabled(self) -> bool:
        return self.tls or any((self.tls_ca, self.tls_cert, self.tls_key))

    def read_password(self) -> str | None:
        """The password from its file (trailing newline stripped) or environment variable."""
        if self.password_file is not None:
            try:
                return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise MqttConfigError(f"cannot read password_file {self.password_file}: {exc.strerror}") from None
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise MqttConfigError(f"environment variable {self.password_env} (password_env) is not set")
            return value
        return None

    @classmethod
    def from_section(cls, section: Any, **overrides: Any) -> MqttSettings:
        """From the daemon config's `mqtt` section (duck-typed: host, port, ..., tls.ca_file)."""
        tls = getattr(section, "tls", None)
        kw: dict[str, Any] = {
            "host": section.host, "port": section.port, "prefix": section.prefix,
            "client_id": section.client_id or "", "protocol": str(section.protocol),
            "keepalive": getattr(section, "keepalive_s", getattr(section, "keepalive", 15)),
            "username": section.username, "password_file": section.password_file,
            "password_env": section.password_env, "decision_deadline_s": section.decision_deadline_s,
        }
        if tls is not None:
            kw.update(tls=True, tls_ca=tls.ca_file, tls_cert=tls.cert_file, tls_key=tls.key_file,
                      tls_insecure=tls.insecure)
        kw.update(overrides)
        return cls(**kw)


def tls_context(settings: MqttSettings, quiet: bool = False) -> ssl.SSLContext:
    """A client context that verifies the broker's chain and host name unless told not to."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(settings.tls_ca) if settings.tls_ca else None)
        if settings.tls_cert:
            ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise MqttConfigError(f"TLS files unusable (ca={settings.tls_ca}, cert={settings.tls_cert}, "
                              f"key={settings.tls_key}): {exc}") from None
    if settings.tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if not quiet:
            log.warning("TLS certificate verification is OFF (tls_insecure); anyone can impersonate the broker",
                        extra={"host": settings.host})
    return ctx


def make_client(settings: MqttSettings, client_id: str, protocol: Literal["5", "3.1.1"],
                password: str | None) -> mqtt.Client:
    """A paho 2.x client configured from settings (shared by the publisher and the gate)."""
    version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
    client.suppress_exceptions = True  # a bug in a callback must not kill the network thread
    paho_log = logging.getLogger("edge.mqtt.paho")
    if paho_log.isEnabledFor(logging.DEBUG):  # paho's own ERROR lines repeat what we log, in its words
        client.enable_logger(paho_log)
    client.connect_timeout = settings.connect_timeout_s
    client.reconnect_delay_set(settings.reconnect_min_delay_s, settings.reconnect_max_delay_s)  # type: ignore[arg-type]
    # paho's own window is twice the publisher's: the publisher never hands paho more than it
    # can write at once, so paho never queues a decision internally and sends it later with an
    # expiry computed at hand-over (past its deadline, on /decision).
    client.max_inflight_messages_set(2 * settings.max_inflight)
    if settings.username:
        client.username_pw_set(settings.username, password)
    if settings.tls_enabled:
        client.tls_set_context(tls_context(settings))
    return client
