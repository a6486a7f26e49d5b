"""MQTT publisher for decisions, status and triggers, backed by the journal.

Delivery model (docs/mqtt.md has the gate-side view):

* `publish_decision()` journals first (durable), then hands the message to paho if
  connected. It never waits for the network: while the broker is away decisions
  simply stay *pending* in the journal.
* A row leaves *pending* only on PUBACK: `/decision` -> delivered, `/decision/late`
  -> late. A refused PUBACK (MQTT 5 reason >= 0x80) leaves it pending and logged.
* On every (re)connect paho's own resend queue is dropped (`drop_out_messages`) and
  the journal is the only source of re-sends, so a message is never sent twice by
  two mechanisms, and its MQTT 5 expiry is recomputed from the time left instead of
  replaying a stale one. Pending rows still inside their deadline go to `/decision`
  (oldest first), expired ones to `/decision/late`, never to the gate.
* Duplicates can still happen (at-least-once): a decision whose PUBACK was lost with
  the connection is sent again after reconnect, with the same `seq` and `part_id`.

Threads: the caller's (publish_decision, publish_status), paho's network thread
(callbacks) and a resender. Lock order is `_send_lock` -> paho's locks and paho's
locks -> `_map_lock`/journal; `_map_lock` is never held while calling paho, because
paho calls on_publish while holding its own outgoing-message lock.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.contract import (
    DEFAULT_PREFIX,
    DEFAULT_TRIGGER_MAX_BYTES,
    ContractError,
    Topics,
    Trigger,
    check_prefix,
    dumps,
    iso,
    normalize_decision,
    parse_trigger,
    parse_ts,
)
from edge.journal import Journal, JournalError, Row

log = logging.getLogger(__name__)

Protocol = Literal["5", "3.1.1", "auto"]
_UNSUPPORTED_PROTOCOL = 0x84  # CONNACK "Unsupported protocol version" (3.1.1 return code 1)
_SESSION_TAKEN_OVER = 0x8E  # DISCONNECT "Session taken over" (MQTT 5): another client took our id
_KEEPALIVE_TIMEOUT = 0x8D  # paho found the link dead itself: a network fault, not a takeover
_LOG_EVERY_S = 10.0  # a repeated warning: the first at once, then one line per this with the count held back
_PAGE = 200
LATE_LOG_EVERY_S = 5.0
SEND_MARGIN_S = 0.05  # a decision this close to its deadline goes to /decision/late: it would arrive after it
MQTT_STRING_MAX = 65535  # a UTF-8 string field in an MQTT packet has a 2-byte length
_thread_errors: dict[str, str] = {}  # paho thread name -> the exception that ended it


def _record_thread_error(args: threading.ExceptHookArgs) -> None:
    if args.thread is not None and args.thread.name.startswith("paho-mqtt-client-"):
        _thread_errors[args.thread.name] = f"{args.exc_type.__name__}: {args.exc_value}"[:300]
    _previous_hook(args)


_previous_hook = threading.excepthook
threading.excepthook = _record_thread_error


def _version() -> str:
    try:
        return metadata.version("edge-inspect")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


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


class Publisher:
    """Journal-backed, non-blocking MQTT publisher for one camera's decisions.

    status_fn() is called for each `online` status; its keys (e.g. version, model,
    uptime_s, counters from the daemon) are merged into the payload.
    """

    def __init__(self, settings: MqttSettings, journal: Journal,
                 status_fn: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.settings = settings
        self.journal = journal
        self.topics = settings.topics
        self._status_fn = status_fn
        self._client: mqtt.Client | None = None
        self._password: str | None = None
        self._protocol: Literal["5", "3.1.1"] = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self._send_lock = threading.RLock()
        self._map_lock = threading.Lock()
        self._acked = threading.Condition(self._map_lock)
        self._mids: dict[int, tuple[str, int | None]] = {}
        self._inflight: dict[int, int] = {}  # seq -> mid, decision and late messages only
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat their mid registration
        # Acknowledged by the broker, not yet marked in the journal (the marker thread batches
        # them; on a full disk they wait here): never re-sent. Guarded by _map_lock.
        self._unmarked: dict[int, str] = {}
        self._mark_evt = threading.Event()
        self._mark_failed = False
        self._marker: threading.Thread | None = None
        self._marker_stop = threading.Event()
        self._started_wall = time.time()
        self._late_logged = -LATE_LOG_EVERY_S
        self._late_since_log = 0
        self._net_deaths = 0  # paho network threads found dead (a bug or a bad setting): relaunched
        self._relaunch_at = 0.0
        self._connected = False
        self._connected_evt = threading.Event()
        self._ready_evt = threading.Event()  # connected and the trigger subscription acknowledged
        self._started = False
        self._fallback = False
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._resender: threading.Thread | None = None
        self._trigger_cb: Callable[[Trigger], None] | None = None
        self._trigger_lock = threading.Lock()
        self._seen_triggers: OrderedDict[str, None] = OrderedDict()
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._started_mono = time.monotonic()
        self._connected_mono = 0.0  # when the current connection was accepted (takeover detection)
        self._log_gate: dict[str, tuple[float, int]] = {}  # key -> (last logged, held back since)

    # -- public API ------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._started

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK (after the re-send set-up) and the next disconnect."""
        return self._connected

    @property
    def protocol(self) -> str:
        """The MQTT version in use (or being tried): "5" or "3.1.1"."""
        return self._protocol

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until connected (for start-up checks and tests; publishing never needs it)."""
        return self._connected_evt.wait(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until connected and, in trigger mode, the broker acknowledged the trigger subscription."""
        return self._ready_evt.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until no journaled decision is pending (all delivered or reported late)."""
        end = time.monotonic() + timeout
        self._wake.set()
        with self._acked:
            while True:
                if self.journal.counts()["pending"] == 0:
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._acked.wait(min(left, 0.25))

    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._stats)

    def start(self) -> None:
        """Connect in the background and return at once, even when the broker is down.

        Configuration problems (password source, TLS files) raise MqttConfigError here,
        because those will not fix themselves by retrying.
        """
        if self._started:
            raise RuntimeError("Publisher already started")
        self._password = self.settings.read_password()
        self._started_mono = time.monotonic()
        self._started_wall = time.time()
        self._stopping.clear()
        self._launch_client()
        self._started = True
        self._resender = threading.Thread(target=self._resend_loop, name="mqtt-resender", daemon=True)
        self._resender.start()
        self._marker_stop.clear()
        self._marker = threading.Thread(target=self._mark_loop, name="journal-marker", daemon=True)
        self._marker.start()
        log.info("mqtt publisher started", extra={
            "host": self.settings.host, "port": self.settings.port, "prefix": self.settings.prefix,
            "client_id": self.settings.effective_client_id, "protocol": self.settings.protocol,
            "tls": self.settings.tls_enabled, "username": self.settings.username or "-"})

    def publish_decision(self, decision: Mapping[str, Any], deadline_ts: float | None = None) -> int:
        """Journal the decision, then send it if connected; returns its seq. Never waits on the network.

        deadline_ts (epoch s) defaults to frame_ts (or ts) + decision_deadline_s.
        Raises ContractError (a ValueError) for a malformed decision and JournalError
        when it cannot be journaled: both are loud on purpose, never a silent drop.
        """
        return self.publish_decisions([(decision, deadline_ts)])[0]

    def publish_decisions(self, items: list[tuple[Mapping[str, Any], float | None]]) -> list[int]:
        """publish_decision for several at once, journaled in one transaction (one fsync): an
        overloaded daemon answers its backlog of triggers so, within their deadlines."""
        now = time.time()
        batch = []
        for decision, deadline_ts in items:
            payload = normalize_decision(decision, now)
            if deadline_ts is None:
                base = parse_ts(payload["frame_ts"] or payload["ts"])
                deadline_ts = base + self.settings.decision_deadline_s
            payload["deadline"] = iso(deadline_ts)
            batch.append((payload, deadline_ts))
        rows = self.journal.append_rows(batch)
        self._count("decisions", len(rows))
        with self._send_lock:
            if self._connected and not self._stopping.is_set():
                for row in rows:
                    with self._map_lock:
                        busy = row.seq in self._inflight  # the resender may have picked it up already
                        # every unacknowledged message counts in paho's window, the status ones too
                        full = len(self._mids) >= 2 * self.settings.max_inflight - 1  # paho would queue it
                    if full:
                        self._wake.set()  # the resender sends it (or reports it late) once the window opens
                        break
                    if not busy and self._pending(row.seq):  # not already sent and acknowledged
                        self._send_row(row)
                return [r.seq for r in rows]
        log.debug("decisions journaled while not connected; sent on reconnect",
                  extra={"seqs": [r.seq for r in rows][:10], "part_id": rows[0].part_id if rows else None})
        return [r.seq for r in rows]

    def on_trigger(self, callback: Callable[[Trigger], None]) -> None:
        """Subscribe to {prefix}/trigger; valid, first-seen triggers reach callback.

        The callback runs on the MQTT network thread: it must only enqueue work.
        Malformed, oversized, retained or repeated triggers are logged and dropped.
        """
        self._trigger_cb = callback
        with self._send_lock:
            client = self._client
            if client is not None:
                client.message_callback_add(self.topics.trigger, self._on_trigger_message)
                if self._connected:
                    self._ready_evt.clear()
                    self._subscribe_triggers(client)

    def publish_status(self, extra: Mapping[str, Any] | None = None) -> bool:
        """Publish the retained `online` status now; False if not connected (it is sent on connect)."""
        with self._send_lock:
            if not self._connected or self._client is None or self._stopping.is_set():
                return False  # stopping: an `online` must never follow the `offline`
            self._publish_status_locked(self._online_payload(extra))
            return True

    def stop(self) -> None:
        """Flush in-flight decisions, publish retained `offline`, disconnect and join threads.

        Undelivered decisions stay pending in the journal for the next start. The
        journal itself is left open: its owner closes it.
        """
        if not self._started:
            return
        self._stopping.set()
        self._wake.set()
        with self._acked:
            self._acked.notify_all()  # a resender waiting for window space must see the stop
        if self._resender is not None:
            self._resender.join(timeout=10)
        client = self._client
        with_will = False
        if client is not None and self._connected:
            with self._acked:
                flushed = self._acked.wait_for(lambda: not self._inflight or not self._connected,
                                               timeout=self.settings.flush_timeout_s)
            if not flushed:
                log.warning("stop: some decisions were not acknowledged in time; they stay pending in the journal",
                            extra={"in_flight": len(self._inflight)})
            info = None
            with self._send_lock:
                if self._connected:
                    info = self._publish_status_locked(self._offline_payload("shutdown"))
            offline_confirmed = False
            if info is not None:
                try:
                    info.wait_for_publish(self.settings.flush_timeout_s)
                    offline_confirmed = info.is_published()
                except (RuntimeError, ValueError) as exc:
                    log.warning("stop: offline status not confirmed", extra={"error": str(exc)})
            # A plain DISCONNECT makes the broker discard the Will, and the retained `online`
            # would outlive us (a clean exit is not restarted): unconfirmed, ask for the Will.
            with_will = not offline_confirmed and self._protocol == "5"
        if client is not None:
            if with_will:
                log.warning("stop: offline status not acknowledged; disconnecting with the Will (offline)")
                client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
            else:
                client.disconnect()
            client.loop_stop()
        self._marker_stop.set()
        self._mark_evt.set()
        if self._marker is not None:
            self._marker.join(timeout=10)
        self._connected = False
        self._connected_evt.clear()
        self._ready_evt.clear()
        self._started = False
        try:
            counts = self.journal.counts()
        except JournalError:  # closed by its owner first: nothing to report
            counts = {}
        log.info("mqtt publisher stopped", extra={**counts, **self.stats()})

    # -- client life cycle -------------------------------------------------------------
    def _launch_client(self) -> None:
        s = self.settings
        client = make_client(s, s.effective_client_id, self._protocol, self._password)
        client.will_set(self.topics.status, dumps(self._offline_payload("connection lost")), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_other_message
        if self._trigger_cb is not None:
            client.message_callback_add(self.topics.trigger, self._on_trigger_message)
        if self._protocol == "5":
            # clean start: the journal, not a broker session, is what survives a reconnect.
            client.connect_async(s.host, s.port, s.keepalive, clean_start=True)
        else:
            client.connect_async(s.host, s.port, s.keepalive)
        with self._send_lock:
            self._client = client
        client.loop_start()
        thread = getattr(client, "_thread", None)
        client._edge_thread_name = thread.name if thread is not None else ""  # type: ignore[attr-defined]

    def _switch_to_311(self) -> None:
        """'auto': the broker refused MQTT 5, so rebuild the client for 3.1.1 (runs on the resender)."""
        self._fallback = False
        with self._send_lock:
            old, self._client = self._client, None
        if old is not None:
            old.loop_stop()
        if self._stopping.is_set():
            return
        self._protocol = "3.1.1"
        log.warning("broker refused MQTT 5; falling back to MQTT 3.1.1 (no message expiry on decisions)",
                    extra={"host": self.settings.host, "port": self.settings.port})
        self._launch_client()

    def _owned(self, client: mqtt.Client) -> bool:
        return client is self._client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        try:
            if not self._owned(client) or self._stopping.is_set():
                return
            if reason.is_failure:
                if (self.settings.protocol == "auto" and self._protocol == "5"
                        and reason.value == _UNSUPPORTED_PROTOCOL):
                    self._fallback = True
                    client.disconnect()
                    self._wake.set()
                    return
                self._count("connect_refused")
                log.error("broker refused the connection", extra={"reason": str(reason), "host": self.settings.host,
                                                                  "username": self.settings.username or "-"})
                return
            with self._send_lock:
                dropped = client.drop_out_messages()
                with self._acked:
                    self._mids.clear()
                    self._inflight.clear()
                    self._early.clear()
                    self._acked.notify_all()
                # Subscribe before `online` goes out: the broker handles both in order, so a gate
                # that has seen `online` knows its triggers are being listened to.
                if self._trigger_cb is not None:
                    self._subscribe_triggers(client)
                else:
                    self._ready_evt.set()
                self._connected_mono = time.monotonic()  # a drop soon after this may be a takeover
                self._connected = True
                self._connected_evt.set()
                self._publish_status_locked(self._online_payload(None))
            self._count("connects")
            pending = self.journal.counts()["pending"]
            log.info("mqtt connected", extra={"protocol": self._protocol, "session_present": flags.session_present,
                                               "pending": pending, "dropped_paho_queue": len(dropped)})
            self._wake.set()
        except Exception:  # never let a callback error kill the network thread
            log.exception("on_connect failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       properties: Properties | None) -> None:
        try:
            if not self._owned(client):
                return
            was = self._connected
            # No _send_lock here: paho may call this while holding its outgoing-message lock
            # (a write failing right after CONNACK), and a publisher holding _send_lock waits
            # for that lock: a deadlock of the inspection thread. A publish racing this flag
            # reaches a dead link and is re-sent from the journal after reconnect.
            self._connected = False
            self._connected_evt.clear()
            self._ready_evt.clear()
            with self._acked:
                self._acked.notify_all()
            if was:
                self._count("disconnects")
                level = logging.INFO if self._stopping.is_set() else logging.WARNING
                log.log(level, "mqtt disconnected; decisions keep going to the journal", extra={
                    "reason": str(reason), "in_flight": len(self._inflight)})
                self._check_takeover(flags, reason)
        except Exception:
            log.exception("on_disconnect failed")

    def _check_takeover(self, flags: mqtt.DisconnectFlags, reason: ReasonCode) -> None:
        """Count and report a session taken over: another client connected with our client id.

        Each such login disconnects the daemon, the broker publishes its Will (`offline`) and
        the gate rejects every part, so it must be loud. An MQTT 5 broker may say so (DISCONNECT
        0x8E; Mosquitto only from 2.0.15). Under 3.1.1, or from a broker that just closes the
        socket, the sign is the fight that follows: we reconnect and take the id back, the
        other client does the same, and each of our connections is dropped soon after it was
        accepted. Such a drop (within one keepalive, without a reason, not a keepalive timeout)
        counts as suspected; the first takeover of a long-lived connection looks like any lost
        link there and is only a `disconnects`.
        """
        if self._stopping.is_set():
            return
        lived = time.monotonic() - self._connected_mono
        if flags.is_disconnect_packet_from_server:
            if reason.value != _SESSION_TAKEN_OVER:
                return  # the broker gave another reason (shutting down, not authorised...)
            evidence = "the broker said so (DISCONNECT 0x8E Session taken over)"
        elif reason.value in (0, _KEEPALIVE_TIMEOUT) or lived >= self.settings.keepalive:
            return
        else:
            evidence = (f"suspected: the broker closed the connection {lived:.1f} s after accepting it, "
                        "without a reason")
        n = self._count("session_taken_over")
        self._log_limited("session_taken_over", logging.ERROR,
                          "mqtt session taken over: another client connected with this daemon's client id; "
                          "the gate sees `offline` and rejects parts while they fight over it", {
                              "client_id": self.settings.effective_client_id,
                              "username": self.settings.username or "-", "protocol": self._protocol,
                              "evidence": evidence, "connected_for_s": round(lived, 2), "taken_over": n,
                              "fix": "one client id per client; bind ids to accounts on the broker "
                                     "(use_username_as_clientid, docs/mqtt.md)"})

    def _log_limited(self, key: str, level: int, msg: str, extra: Mapping[str, Any]) -> None:
        """Log the first occurrence of `key` at once, then at most one line per _LOG_EVERY_S
        with the number held back (`suppressed`): a stream of bad triggers or a takeover fight
        must not flood the log. The counters in stats() stay exact."""
        now = time.monotonic()
        with self._stats_lock:
            last, held = self._log_gate.get(key, (-math.inf, 0))
            if now - last < _LOG_EVERY_S:
                self._log_gate[key] = (last, held + 1)
                return
            self._log_gate[key] = (now, 0)
        log.log(level, msg, extra={**extra, "suppressed": held})

    def _subscribe_triggers(self, client: mqtt.Client) -> None:
        """Subscribe so that retained triggers can be told apart and dropped (docs/mqtt.md).

        A broker clears the retain flag of a retained publish it forwards to a subscriber that
        is already there, so it would look like a live trigger. MQTT 5 retain-as-published
        keeps the flag; the copy the broker stores arrives flagged at subscribe anyway (retain
        handling 0: sent, so it is counted and reported instead of sitting there unseen). MQTT
        3.1.1 has no such option: there a retained trigger published while we are subscribed
        cannot be told from a plain one.
        """
        if self._protocol == "5":
            opts = SubscribeOptions(qos=1, retainAsPublished=True,
                                    retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
            rc, _mid = client.subscribe(self.topics.trigger, options=opts)
        else:
            rc, _mid = client.subscribe(self.topics.trigger, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("cannot subscribe to triggers", extra={"topic": self.topics.trigger,
                                                             "rc": mqtt.error_string(rc)})

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Properties | None) -> None:
        # The trigger topic is the publisher's only subscription, so any SUBACK is its SUBACK
        # (matching on mid would race: the SUBACK can arrive before subscribe() returns it).
        if not self._owned(client):
            return
        if any(r.is_failure for r in reasons):
            # Every trigger would go unanswered and the gate would reject every part: say so loudly.
            log.error("broker refused the trigger subscription (check its ACL)",
                      extra={"topic": self.topics.trigger, "reason": ",".join(str(r) for r in reasons)})
            return
        self._ready_evt.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._count("connect_failures")
        n = self.stats().get("connect_failures", 0)
        if n == 1 or n % 20 == 0:
            # paho does not say why; find out off the network thread so retries are not delayed.
            threading.Thread(target=self._diagnose, args=(n,), name="mqtt-diagnose", daemon=True).start()
        else:
            log.debug("cannot reach the broker; retrying", extra={
                "host": self.settings.host, "port": self.settings.port, "failures": n})

    def _diagnose(self, failures: int) -> None:
        """Log why connecting fails (refused, DNS, TLS verification...), in plain words."""
        s = self.settings
        try:
            with socket.create_connection((s.host, s.port), timeout=s.connect_timeout_s) as sock:
                if s.tls_enabled:
                    with tls_context(s, quiet=True).wrap_socket(sock, server_hostname=s.host):
                        pass
            cause = "reachable now (it may have been restarting)"
        except ssl.SSLCertVerificationError as exc:
            cause = f"TLS certificate verification failed: {exc.verify_message}"
        except (OSError, ssl.SSLError, MqttConfigError) as exc:
            cause = str(exc) or type(exc).__name__
        log.warning("cannot reach the broker; retrying", extra={
            "host": s.host, "port": s.port, "tls": s.tls_enabled, "failures": failures, "cause": cause})

    # -- sending -----------------------------------------------------------------------
    def _expiry(self, seconds: float) -> Properties | None:
        if self._protocol != "5":
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        # Whole seconds, rounded down: a broker must not hold a decision past its deadline for
        # longer than the 1 s granularity forces (the gate checks `deadline` itself too).
        props.MessageExpiryInterval = max(1, math.floor(seconds))
        props.PayloadFormatIndicator = 1
        props.ContentType = "application/json"
        return props

    def _send_row(self, row: Row) -> bool:
        """Publish one journaled row to /decision or, past its deadline, /decision/late. Hold _send_lock."""
        client = self._client
        if client is None:
            return False
        now = time.time()
        if now < row.deadline_ts - SEND_MARGIN_S:
            kind, topic, payload = "decision", self.topics.decision, row.payload
            props = self._expiry(row.deadline_ts - now)
        else:
            kind, topic = "late", self.topics.late
            body = row.decision
            body.update(reported_ts=iso(now), late_by_s=round(now - row.deadline_ts, 3))
            payload, props = dumps(body), None
        try:
            info = client.publish(topic, payload, qos=1, retain=False, properties=props)
        except (ValueError, OSError) as exc:
            log.error("publish raised; decision stays pending", extra={"seq": row.seq, "error": str(exc)})
            self._count("publish_errors")
            return False
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("publish not accepted by the client; decision stays pending",
                        extra={"seq": row.seq, "rc": mqtt.error_string(info.rc)})
            self._count("publish_errors")
            return False
        self._count("sent_" + kind)
        if kind == "late":
            self._late_since_log += 1
            if time.monotonic() - self._late_logged >= LATE_LOG_EVERY_S:  # a backlog must not flood the log
                earlier = row.created_ts < self._started_wall  # summarised at start (edge.service): a record
                log.log(logging.INFO if earlier else logging.WARNING,
                        "decision missed its deadline; reported on the late topic, not to the gate",
                        extra={"seq": row.seq, "part_id": row.part_id, "late_by_s": round(now - row.deadline_ts, 3),
                               "count": self._late_since_log, "earlier_run": earlier})
                self._late_logged, self._late_since_log = time.monotonic(), 0
        self._register(info.mid, kind, row.seq)
        return True

    def _publish_status_locked(self, payload: Mapping[str, Any]) -> mqtt.MQTTMessageInfo | None:
        client = self._client
        if client is None:
            return None
        props = None
        if payload.get("state") == "online" and self.settings.online_expiry_s > 0:
            props = self._expiry(self.settings.online_expiry_s)  # MQTT 5 only; offline never expires
        info = client.publish(self.topics.status, dumps(payload), qos=1, retain=True, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("status publish not accepted", extra={"rc": mqtt.error_string(info.rc)})
            return None
        self._register(info.mid, "status", None)
        return info

    def _register(self, mid: int, kind: str, seq: int | None) -> None:
        with self._acked:
            early = self._early.pop(mid, None)
            if early is None:
                self._mids[mid] = (kind, seq)
                if seq is not None:
                    self._inflight[seq] = mid
                return
        self._complete(mid, kind, seq, early)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties) -> None:
        try:
            if not self._owned(client):
                return
            with self._acked:
                entry = self._mids.get(mid)
                if entry is None:
                    self._early[mid] = reason
                    while len(self._early) > 1000:  # acks nobody will claim must not pile up
                        del self._early[next(iter(self._early))]
                    return
            self._complete(mid, entry[0], entry[1], reason)
        except Exception:
            log.exception("on_publish failed", extra={"mid": mid})

    def _complete(self, mid: int, kind: str, seq: int | None, reason: ReasonCode) -> None:
        """A PUBACK: mark the journal first, then forget the mid (the resender checks both)."""
        ok = not reason.is_failure
        if not ok:
            self._count("refused_by_broker")
            log.error("broker refused a publish; it stays pending and is retried",
                      extra={"kind": kind, "seq": seq, "reason": str(reason)})
        elif seq is not None:
            with self._map_lock:
                self._unmarked[seq] = kind  # written to the journal by the marker, never re-sent
            self._mark_evt.set()
            self._count("acked_" + kind)
        with self._acked:
            if self._mids.get(mid) == (kind, seq):
                del self._mids[mid]
            if seq is not None and self._inflight.get(seq) == mid:
                del self._inflight[seq]
            self._acked.notify_all()

    # -- re-sending ----------------------------------------------------------------------
    def _resend_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.settings.resend_interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                if self._fallback:
                    self._switch_to_311()
                self._watch_network_thread()
                if self._connected:
                    self._drain()
            except JournalError as exc:  # a damaged page: the message says what to do; no traceback
                log.error("re-send pass failed; retrying later", extra={"error": str(exc)})
            except Exception:
                log.exception("re-send pass failed; retrying later")

    def _pending(self, seq: int) -> bool:
        """Still to be sent: pending in the journal and not already acknowledged by the broker."""
        with self._map_lock:
            if seq in self._unmarked:
                return False
        return self.journal.is_pending(seq)

    def _mark_loop(self) -> None:
        """Record PUBACKs in the journal, many per transaction: one fsync per PUBACK on paho's
        thread would cap delivery at the disk's fsync rate and stall the network thread."""
        while not self._marker_stop.is_set():
            self._mark_evt.wait(0.5)
            self._mark_evt.clear()
            self._write_marks()
            if self._mark_failed:
                self._marker_stop.wait(self.settings.resend_interval_s)  # the disk is full: retry calmly
        self._write_marks()  # the PUBACKs of the final flush

    def _write_marks(self) -> None:
        """The broker has these messages. If the journal cannot say so (disk full, read-only file
        system), re-sending them would duplicate them now and turn them into an endless stream of
        late reports: they stay held here, are never re-sent, and the state is a delivery fault."""
        with self._map_lock:
            held = dict(self._unmarked)
        if not held:
            return
        try:
            self.journal.finish_many([(seq, "delivered" if kind == "decision" else "late")
                                      for seq, kind in held.items()])
        except JournalError as exc:
            if not self._mark_failed:
                self._mark_failed = True
                self._count("journal_mark_failed")
                log.error("journal cannot record deliveries (disk full?): delivered decisions are not sent "
                          "again; retrying the journal write. Free space on the journal's disk",
                          extra={"rows": len(held), "error": str(exc), "fault": "journal_unwritable",
                                 "path": str(self.journal.path)})
            return
        with self._map_lock:
            for seq in held:
                if self._unmarked.get(seq) == held[seq]:
                    del self._unmarked[seq]
        with self._acked:
            self._acked.notify_all()  # flush() waits on the journal's pending count
        if self._mark_failed:
            self._mark_failed = False
            log.info("journal writable again: deliveries recorded", extra={"rows": len(held),
                                                                           "fault_cleared": "journal_unwritable"})

    def faults(self) -> list[str]:
        """Delivery faults now in force (empty when healthy): in status, metrics and the log."""
        out = []
        if self._mark_failed:
            out.append("journal_unwritable")
        if self._net_deaths and not self._connected:
            out.append("mqtt_thread_died")
        return out

    def _watch_network_thread(self) -> None:
        """A paho network thread that died (an exception inside paho) silently ends all MQTT: the
        daemon would stay 'no broker yet' for ever. Found here, reported, and the client relaunched
        with backoff; the fault clears once it connects again."""
        with self._send_lock:
            client = self._client
            dead = (client is not None and self._started and not self._stopping.is_set() and not self._fallback
                    and hasattr(client, "_edge_thread_name") and getattr(client, "_thread", None) is None)
            if not dead or time.monotonic() < self._relaunch_at:
                return
            self._client = None
            self._connected = False
        self._connected_evt.clear()
        self._ready_evt.clear()
        self._net_deaths += 1
        self._count("mqtt_thread_died")
        cause = _thread_errors.pop(getattr(client, "_edge_thread_name", ""), None)
        try:
            sock = client.socket()
            if sock is not None:
                sock.close()  # abrupt, as a crash: the broker publishes our Will (offline)
        except OSError:
            pass
        delay = min(self.settings.reconnect_max_delay_s, self.settings.reconnect_min_delay_s * 2 ** min(self._net_deaths, 10))
        self._relaunch_at = time.monotonic() + delay
        log.error("MQTT network thread died; relaunching the client", extra={
            "fault": "mqtt_thread_died", "error": cause or "unknown (see the traceback above)",
            "deaths": self._net_deaths, "client_id": self.settings.effective_client_id[:64]})
        with self._acked:
            self._mids.clear()
            self._inflight.clear()
            self._acked.notify_all()
        self._launch_client()

    def _window_open(self) -> bool:
        with self._acked:
            self._acked.wait_for(lambda: len(self._inflight) < self.settings.max_inflight or not self._connected
                                 or self._stopping.is_set(), timeout=max(30.0, 3 * self.settings.keepalive))
            return len(self._inflight) < self.settings.max_inflight and self._connected and not self._stopping.is_set()

    def _drain(self) -> None:
        """Send pending rows not in flight: those still in time first, then the late reports."""
        sent = 0
        for in_time in (True, False):
            after = 0
            while True:
                rows = self.journal.undelivered(limit=_PAGE, after_seq=after)
                if not rows:
                    break
                for row in rows:
                    after = row.seq
                    if (time.time() < row.deadline_ts) != in_time:
                        continue
                    if not self._window_open():
                        self._log_resent(sent)
                        return
                    with self._send_lock:
                        if not self._connected or self._stopping.is_set():
                            self._log_resent(sent)
                            return
                        with self._acked:
                            busy = row.seq in self._inflight
                        if busy or not self._pending(row.seq):
                            continue
                        if self._send_row(row):
                            sent += 1
        self._log_resent(sent)

    def _log_resent(self, sent: int) -> None:
        if sent:
            self._count("resent", sent)
            log.info("re-sent journaled decisions", extra={"count": sent, **self.journal.counts()})

    # -- triggers and status ---------------------------------------------------------------
    def _on_trigger_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if not self._owned(client):
                return
            size = len(msg.payload)
            if msg.retain:
                self._ignore_trigger("retained", "retained trigger ignored (a trigger is an event, not a state; "
                                     "clear it with an empty retained publish, and have the sender publish "
                                     "triggers without retain)", {"topic": msg.topic, "bytes": size})
                return
            try:
                trig = parse_trigger(msg.payload, time.time(), time.monotonic(), self.settings.trigger_max_bytes)
            except ContractError as exc:
                why = "oversized" if size > self.settings.trigger_max_bytes else "malformed"
                self._ignore_trigger(why, f"{why} trigger ignored; that part times out and is rejected", {
                    "topic": msg.topic, "bytes": size, "error": str(exc), "head": repr(bytes(msg.payload[:48]))})
                return
            with self._trigger_lock:
                repeated = trig.part_id in self._seen_triggers
                if not repeated:
                    self._seen_triggers[trig.part_id] = None
                    while len(self._seen_triggers) > self.settings.trigger_dedup:
                        self._seen_triggers.popitem(last=False)
            if repeated:
                self._ignore_trigger("repeated", "repeated trigger ignored (already answered; a part_id reused "
                                     "for a new part gets no decision and is rejected)", {"part_id": trig.part_id})
                return
            self._count("triggers")
            cb = self._trigger_cb
            if cb is not None:
                cb(trig)
        except Exception:
            log.exception("trigger handling failed", extra={"topic": msg.topic})

    def _ignore_trigger(self, why: str, msg: str, extra: Mapping[str, Any]) -> None:
        """Drop a trigger: counted by reason (`triggers_<why>_ignored`, all in `triggers_ignored`)
        and logged, rate-limited per reason. Its part gets no decision and the gate rejects it
        on timeout, so the operator must be able to see why (status `mqtt`, the log)."""
        self._count("triggers_ignored")
        n = self._count(f"triggers_{why}_ignored")
        self._log_limited("trigger_" + why, logging.WARNING, msg, {**extra, "reason": why, "ignored": n})

    def _on_other_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        log.debug("unexpected message ignored", extra={"topic": msg.topic, "bytes": len(msg.payload)})

    def _online_payload(self, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"state": "online", "ts": iso(time.time()),
                                   "client_id": self.settings.effective_client_id, "version": _version(),
                                   "model": None, "uptime_s": round(time.monotonic() - self._started_mono, 1),
                                   "protocol": self._protocol}
        if self._status_fn is not None:
            try:
                payload.update(self._status_fn())
            except Exception:
                log.exception("status_fn failed; status sent without daemon fields")
        if extra:
            payload.update(extra)
        try:
            payload["journal"] = self.journal.counts()
        except JournalError as exc:  # `online` must still go out: the gate needs it more than the counts
            log.warning("status sent without journal counts", extra={"error": str(exc)})
        payload["mqtt"] = self.stats()
        payload["delivery_faults"] = self.faults()
        return payload

    def _offline_payload(self, reason: str) -> dict[str, Any]:
        key = "ts" if reason == "shutdown" else "will_registered_ts"
        return {"state": "offline", "reason": reason, key: iso(time.time()),
                "client_id": self.settings.effective_client_id, "version": _version()}

    def _count(self, key: str, n: int = 1) -> int:
        """Add n to a stats() counter; returns its new value."""
        with self._stats_lock:
            self._stats[key] += n
            return self._stats[key]
