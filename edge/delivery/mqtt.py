"""The MQTT transport of the outbox: decisions, status and triggers over paho 2.x.

The delivery model (journal first, acknowledged means delivered, late never to the gate,
re-sends from the journal only) lives in edge.delivery.outbox; this adapter adds what is
MQTT's own:

* On every (re)connect paho's own resend queue is dropped (`drop_out_messages`) and
  the journal is the only source of re-sends, so a message is never sent twice by
  two mechanisms, and its MQTT 5 expiry is recomputed from the time left instead of
  replaying a stale one.
* Duplicates can still happen (at-least-once): a decision whose PUBACK was lost with
  the connection is sent again after reconnect, with the same `seq` and `part_id`.
* The retained `online`/`offline` status with a Will, the trigger subscription (retained,
  malformed, oversized and repeated triggers dropped and counted), the 3.1.1 fallback,
  session takeover detection and a watchdog on paho's network thread.

Threads: the caller's (publish_decision, publish_status), paho's network thread
(callbacks) and a resender. Lock order is `_send_lock` -> paho's locks and paho's
locks -> the outbox's lock/journal; the outbox's lock is never held while calling paho,
because paho calls on_publish while holding its own outgoing-message lock.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.delivery.contract import ContractError, RecipeRequest, Trigger, dumps, parse_recipe_request
from edge.delivery.journal import Journal, JournalError, Row
from edge.delivery.mqtt_settings import MqttConfigError, MqttSettings, make_client, tls_context
from edge.delivery.outbox import Counters, Outbox
from edge.delivery.triggers import TriggerIntake
from edge.timestamps import iso

log = logging.getLogger(__name__)

_UNSUPPORTED_PROTOCOL = 0x84  # CONNACK "Unsupported protocol version" (3.1.1 return code 1)
_SESSION_TAKEN_OVER = 0x8E  # DISCONNECT "Session taken over" (MQTT 5): another client took our id
_KEEPALIVE_TIMEOUT = 0x8D  # paho found the link dead itself: a network fault, not a takeover
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
        self.counters = Counters()
        self.outbox = Outbox(journal, settings.decision_deadline_s, settings.max_inflight, self.counters,
                             retry_s=settings.resend_interval_s)
        self._status_fn = status_fn
        self._client: mqtt.Client | None = None
        self._password: str | None = None
        self._protocol: Literal["5", "3.1.1"] = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self._send_lock = threading.RLock()
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
        self._recipe_cb: Callable[[RecipeRequest], str | None] | None = None  # None: taken, else why refused
        self._retained: dict[str, str] = {}  # topic -> payload the box keeps retained (re-sent on connect)
        self.triggers = TriggerIntake(self.counters, settings.trigger_max_bytes, settings.trigger_dedup)
        self._started_mono = time.monotonic()
        self._connected_mono = 0.0  # when the current connection was accepted (takeover detection)

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
        self._wake.set()
        return self.outbox.flush(timeout)

    def stats(self) -> dict[str, int]:
        return self.counters.snapshot()

    def start(self) -> None:
        """Connect in the background and return at once, even when the broker is down.

        Configuration problems (password source, TLS files) raise MqttConfigError here,
        because those will not fix themselves by retrying.
        """
        if self._started:
            raise RuntimeError("Publisher already started")
        self._password = self.settings.read_password()
        self._started_mono = time.monotonic()
        self._stopping.clear()
        self._launch_client()
        self._started = True
        self._resender = threading.Thread(target=self._resend_loop, name="mqtt-resender", daemon=True)
        self._resender.start()
        self.outbox.start()
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
        rows = self.outbox.accept(items)
        with self._send_lock:
            if self._connected and not self._stopping.is_set():
                for row in rows:
                    # every unacknowledged message counts in paho's window, the status ones too
                    if self.outbox.unacknowledged() >= 2 * self.settings.max_inflight - 1:  # paho would queue it
                        self._wake.set()  # the resender sends it (or reports it late) once the window opens
                        break
                    if self.outbox.due(row.seq):  # the resender may have picked it up already
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

    def on_recipe(self, callback: Callable[[RecipeRequest], str | None]) -> None:
        """Take recipe switch requests from {prefix}/recipe/set (call before start): callback
        returns None when the switch is taken, else why not; each request is answered on
        {prefix}/recipe/reply. Runs on the MQTT network thread: the callback must only enqueue."""
        self._recipe_cb = callback

    def set_retained(self, topic: str, payload: Mapping[str, Any]) -> bool:
        """Keep `payload` retained on `topic` (QoS 1), now and after every reconnect; False if not sent now."""
        text = dumps(payload)
        with self._send_lock:
            self._retained[topic] = text
            if not self._usable() or self._client is None:
                return False
            return self._client.publish(topic, text, qos=1, retain=True).rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_event(self, topic: str, payload: Mapping[str, Any]) -> bool:
        """Best effort, for records that are kept elsewhere (shadow disagreements): QoS 0, not
        retained, not journaled, nothing re-sent; False when not connected."""
        with self._send_lock:
            if not self._usable() or self._client is None:
                return False
            info = self._client.publish(topic, dumps(payload), qos=0, retain=False)
            return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

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
        self.outbox.wake_waiters()  # a resender waiting for window space must see the stop
        if self._resender is not None:
            self._resender.join(timeout=10)
        client = self._client
        with_will = False
        if client is not None and self._connected:
            flushed = self.outbox.wait_in_flight_done(lambda: not self._connected, self.settings.flush_timeout_s)
            if not flushed:
                log.warning("stop: some decisions were not acknowledged in time; they stay pending in the journal",
                            extra={"in_flight": self.outbox.in_flight()})
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
        self.outbox.stop()
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
        if self._recipe_cb is not None:
            client.message_callback_add(self.topics.recipe_set, self._on_recipe_message)
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
                self.counters.count("connect_refused")
                log.error("broker refused the connection", extra={"reason": str(reason), "host": self.settings.host,
                                                                  "username": self.settings.username or "-"})
                return
            with self._send_lock:
                dropped = client.drop_out_messages()
                self.outbox.forget_in_flight()
                # Subscribe before `online` goes out: the broker handles both in order, so a gate
                # that has seen `online` knows its triggers are being listened to.
                if self._trigger_cb is not None or self._recipe_cb is not None:
                    self._subscribe_triggers(client)
                else:
                    self._ready_evt.set()
                self._connected_mono = time.monotonic()  # a drop soon after this may be a takeover
                self._connected = True
                self._connected_evt.set()
                for topic, text in self._retained.items():  # the recipe in force, before `online`
                    client.publish(topic, text, qos=1, retain=True)
                self._publish_status_locked(self._online_payload(None))
            self.counters.count("connects")
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
            self.outbox.wake_waiters()
            if was:
                self.counters.count("disconnects")
                level = logging.INFO if self._stopping.is_set() else logging.WARNING
                log.log(level, "mqtt disconnected; decisions keep going to the journal", extra={
                    "reason": str(reason), "in_flight": self.outbox.in_flight()})
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
        n = self.counters.count("session_taken_over")
        self._log_limited("session_taken_over", logging.ERROR,
                          "mqtt session taken over: another client connected with this daemon's client id; "
                          "the gate sees `offline` and rejects parts while they fight over it", {
                              "client_id": self.settings.effective_client_id,
                              "username": self.settings.username or "-", "protocol": self._protocol,
                              "evidence": evidence, "connected_for_s": round(lived, 2), "taken_over": n,
                              "fix": "one client id per client; bind ids to accounts on the broker "
                                     "(use_username_as_clientid, docs/mqtt.md)"})

    def _log_limited(self, key: str, level: int, msg: str, extra: Mapping[str, Any]) -> None:
        self.counters.log_limited(log, key, level, msg, extra)

    def _subscribe_triggers(self, client: mqtt.Client) -> None:
        """Subscribe so that retained triggers can be told apart and dropped (docs/mqtt.md).

        A broker clears the retain flag of a retained publish it forwards to a subscriber that
        is already there, so it would look like a live trigger. MQTT 5 retain-as-published
        keeps the flag; the copy the broker stores arrives flagged at subscribe anyway (retain
        handling 0: sent, so it is counted and reported instead of sitting there unseen). MQTT
        3.1.1 has no such option: there a retained trigger published while we are subscribed
        cannot be told from a plain one.
        """
        # Recipe requests come in the same SUBSCRIBE (one SUBACK), under the same retained rule.
        topics = [t for t, cb in ((self.topics.trigger, self._trigger_cb), (self.topics.recipe_set, self._recipe_cb))
                  if cb is not None]
        if self._protocol == "5":
            opts = SubscribeOptions(qos=1, retainAsPublished=True,
                                    retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
            rc, _mid = client.subscribe([(t, opts) for t in topics])
        else:
            rc, _mid = client.subscribe([(t, 1) for t in topics])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("cannot subscribe to triggers", extra={"topic": ",".join(topics), "rc": mqtt.error_string(rc)})

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Properties | None) -> None:
        # The trigger (and recipe) topics are the publisher's only SUBSCRIBE, so any SUBACK is its SUBACK
        # (matching on mid would race: the SUBACK can arrive before subscribe() returns it).
        if not self._owned(client):
            return
        if any(r.is_failure for r in reasons):
            # Every trigger would go unanswered and the gate would reject every part: say so loudly.
            log.error("broker refused the trigger subscription (check its ACL)",
                      extra={"topic": self.topics.trigger, "reason": ",".join(str(r) for r in reasons),
                             **({"recipe_topic": self.topics.recipe_set} if self._recipe_cb is not None else {})})
            return
        self._ready_evt.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.counters.count("connect_failures")
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
        out = self.outbox.route(row)
        topic = self.topics.decision if out.kind == "decision" else self.topics.late
        props = self._expiry(out.seconds_left) if out.seconds_left is not None else None
        try:
            info = client.publish(topic, out.payload, qos=1, retain=False, properties=props)
        except (ValueError, OSError) as exc:
            log.error("publish raised; decision stays pending", extra={"seq": row.seq, "error": str(exc)})
            self.counters.count("publish_errors")
            return False
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("publish not accepted by the client; decision stays pending",
                        extra={"seq": row.seq, "rc": mqtt.error_string(info.rc)})
            self.counters.count("publish_errors")
            return False
        self.outbox.sent(info.mid, out.kind, row)
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
        self.outbox.sent(info.mid, "status", None)
        return info

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties) -> None:
        try:
            if self._owned(client):
                self.outbox.acked(mid, str(reason) if reason.is_failure else None)
        except Exception:
            log.exception("on_publish failed", extra={"mid": mid})

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
                    self.outbox.drain(self._send_if_due, self._usable, max(30.0, 3 * self.settings.keepalive))
            except JournalError as exc:  # a damaged page: the message says what to do; no traceback
                log.error("re-send pass failed; retrying later", extra={"error": str(exc)})
            except Exception:
                log.exception("re-send pass failed; retrying later")

    def _usable(self) -> bool:
        return self._connected and not self._stopping.is_set()

    def _send_if_due(self, row: Row) -> bool | None:
        """The drain's send: None once the link is gone, False for a row no longer due."""
        with self._send_lock:
            if not self._usable():
                return None
            return self.outbox.due(row.seq) and self._send_row(row)

    def faults(self) -> list[str]:
        """Delivery faults now in force (empty when healthy): in status, metrics and the log."""
        out = self.outbox.faults()
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
        self.counters.count("mqtt_thread_died")
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
        self.outbox.forget_in_flight()
        self._launch_client()

    # -- triggers and status ---------------------------------------------------------------
    def _on_trigger_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if not self._owned(client):
                return
            trig = self.triggers.take(msg.payload, bool(msg.retain), msg.topic)
            cb = self._trigger_cb
            if trig is not None and cb is not None:
                cb(trig)
        except Exception:
            log.exception("trigger handling failed", extra={"topic": msg.topic})

    def _on_recipe_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """A recipe switch request: refused with a reason (retained, malformed, unknown), or taken."""
        try:
            if not self._owned(client):
                return
            if msg.retain:
                # A switch is an event: a retained one would switch every box that reconnects, hours later.
                n = self.counters.count("recipe_requests_retained_ignored")
                self._log_limited("recipe_retained", logging.WARNING, "retained recipe request ignored (publish "
                                  "recipe requests without retain; clear it with an empty retained publish)",
                                  {"topic": msg.topic, "ignored": n})
                return
            try:
                req = parse_recipe_request(msg.payload, self.settings.trigger_max_bytes)
            except ContractError as exc:
                self.counters.count("recipe_requests_refused")
                self._reply_recipe(None, None, f"malformed request: {exc}")
                return
            cb = self._recipe_cb
            why = cb(req) if cb is not None else "recipes are not taken here"
            self.counters.count("recipe_requests_taken" if why is None else "recipe_requests_refused")
            self._reply_recipe(req.recipe, req.id, why)
        except Exception:
            log.exception("recipe request handling failed", extra={"topic": msg.topic})

    def _reply_recipe(self, recipe: str | None, request_id: str | None, why: str | None) -> None:
        if why is not None:
            self._log_limited("recipe_refused", logging.WARNING, "recipe request refused",
                              {"recipe": (recipe or "")[:64], "id": request_id, "why": why})
        payload = {"id": request_id, "recipe": recipe, "taken": why is None, "error": why, "ts": iso(time.time())}
        with self._send_lock:
            if self._client is not None:
                self._client.publish(self.topics.recipe_reply, dumps(payload), qos=1, retain=False)

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
