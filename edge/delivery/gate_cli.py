"""`edge-gate`: the reference sorting gate (edge.delivery.gate) on MQTT, as a console tool
that reads part ids from stdin and prints one line per actuation (docs/mqtt.md)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.delivery.contract import (
    DEFAULT_PREFIX,
    ContractError,
    dumps,
    iso,
    parse_trigger,
)
from edge.delivery.gate import Gate, GateAction
from edge.delivery.mqtt_settings import MqttConfigError, MqttSettings, make_client
from edge.ops import logs

log = logging.getLogger("edge.delivery.gate")  # one name for the gate's lines, run as a script or not


class GateClient:
    """Gate logic on MQTT: subscribes decision and status, optionally sends or follows triggers."""

    def __init__(self, settings: MqttSettings, gate: Gate, *, client_id: str | None = None,
                 follow_triggers: bool = False) -> None:
        self.settings = settings
        self.gate = gate
        self.topics = settings.topics
        self.follow_triggers = follow_triggers
        self._client_id = client_id or f"{settings.effective_client_id}-gate"
        self._client: mqtt.Client | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="gate-ticker", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        """Connect in the background; the gate rejects everything until it hears `online`."""
        s = self.settings
        # The gate needs no MQTT 5 feature (it keeps its own deadline), so "auto" means 3.1.1.
        client = make_client(s, self._client_id, "5" if s.protocol == "5" else "3.1.1", s.read_password())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.message_callback_add(self.topics.decision, self._on_decision)
        client.message_callback_add(self.topics.status, self._on_status)
        if self.follow_triggers:
            client.message_callback_add(self.topics.trigger, self._on_trigger)
        self.gate.link(False)
        client.connect_async(s.host, s.port, s.keepalive)
        self._client = client
        client.loop_start()
        self._ticker.start()

    def expect(self, part_id: str, send_trigger: bool = False) -> GateAction | None:
        """Announce a part; with send_trigger also ask the daemon to inspect it (trigger mode)."""
        act = self.gate.expect(part_id)
        if send_trigger and act is None and self._client is not None:
            info = self._client.publish(self.topics.trigger, dumps({"part_id": part_id, "ts": iso(time.time())}),
                                        qos=1, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning("trigger not sent; the part will time out and be rejected",
                            extra={"part_id": part_id, "rc": mqtt.error_string(info.rc)})
        self._wake.set()
        return act

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._ticker.is_alive():
            self._ticker.join(2)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            nxt = self.gate.next_deadline()
            wait = 0.5 if nxt is None else min(0.5, max(0.0, nxt - self.gate.now()) + 0.001)
            self._wake.wait(wait)
            self._wake.clear()
            self.gate.tick()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker refused the gate's connection", extra={"reason": str(reason)})
            return
        topics = [(self.topics.decision, 1), (self.topics.status, 1)]
        if self.follow_triggers:
            topics.append((self.topics.trigger, 1))
        client.subscribe(topics)
        self.gate.link(True)
        self.connected.set()
        log.info("gate connected", extra={"host": self.settings.host, "prefix": self.settings.prefix})

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       properties: Properties | None) -> None:
        self.connected.clear()
        self.gate.link(False)
        if not self._stop.is_set():
            log.warning("gate lost the broker; rejecting until reconnected", extra={"reason": str(reason)})

    def _on_decision(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.gate.on_decision(msg.payload)

    def _on_status(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.gate.on_status(msg.payload)

    def _on_trigger(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            trig = parse_trigger(msg.payload, time.time(), time.monotonic())
        except ContractError as exc:
            log.warning("malformed trigger ignored", extra={"error": str(exc)})
            return
        self.expect(trig.part_id)


DESCRIPTION = """\
Reference sorting gate for edge-inspect (the rules: docs/mqtt.md). Reads part ids from
stdin, one per line, as a part sensor reports them, and prints one line per part:

  ACCEPT part=P-1 reason=model seq=12
  REJECT part=P-2 reason=fault:no_part seq=13
  REJECT part=P-3 reason=timeout

A part is accepted only when the daemon's `accept` for it arrives within --deadline while
the daemon is online and the gate's own broker link is up; anything else rejects it. With
a decision, `reason` is the decision's own (`model`, or `fault:<what>` for a fail-safe
reject) and `seq` its journal number; otherwise it is the gate's: `timeout`, `offline`,
`link_down` or `repeated_part_id`. Counters go to stderr at the end.

Exit status: 0 once stdin ends and every part is answered; 2 bad settings.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; each option's default appended unless it is unset or off."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gate", description=DESCRIPTION, formatter_class=_HelpFormatter)
    p.add_argument("--host", default="localhost", help="MQTT broker host")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    p.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help="topic prefix of the daemon's camera (its mqtt.prefix): {prefix}/decision, /status, /trigger")
    p.add_argument("--deadline", type=float, default=2.0, metavar="S",
                   help="reject a part when no decision arrives within S seconds of announcing it")
    p.add_argument("--protocol", choices=("3.1.1", "5", "auto"), default="auto",
                   help="MQTT protocol version; auto means 3.1.1, as the gate needs nothing of MQTT 5")
    p.add_argument("--client-id", default=None,
                   help="MQTT client id (default: edge-inspect-<hostname>-gate); never the daemon's own, or "
                        "each login knocks the other off the broker")
    p.add_argument("--username", help="MQTT user name (default: none, anonymous)")
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="file holding the MQTT password (trailing newline stripped)")
    p.add_argument("--password-env", metavar="VAR", help="environment variable holding the MQTT password")
    p.add_argument("--tls", action="store_true", help="TLS with the system CA store (implied by --tls-ca)")
    p.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA certificate file to verify the broker with")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate file (with --tls-key)")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="client private key file (with --tls-cert)")
    p.add_argument("--tls-insecure", action="store_true", help="skip certificate verification (testing only)")
    p.add_argument("--send-triggers", action="store_true",
                   help="trigger mode: publish {prefix}/trigger for each part id read from stdin")
    p.add_argument("--follow-triggers", action="store_true",
                   help="also expect every part announced on {prefix}/trigger by someone else")
    p.add_argument("--wait-online", type=float, default=1.0, metavar="S",
                   help="at start, wait up to S seconds for the daemon's `online` status (parts announced "
                        "before it are rejected)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, every gate action included (default: warnings only)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Read part ids from stdin; print ACCEPT/REJECT lines; 2 on bad usage or settings."""
    args = build_parser().parse_args(argv)
    logs.setup(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        settings = MqttSettings(
            host=args.host, port=args.port, prefix=args.prefix, protocol=args.protocol,
            client_id=args.client_id or "", username=args.username, password_file=args.password_file,
            password_env=args.password_env, tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
            tls_key=args.tls_key, tls_insecure=args.tls_insecure, decision_deadline_s=args.deadline)
        out_lock = threading.Lock()

        def actuate(a: GateAction) -> None:
            # A decision's own reason says why the daemon rejected (fault:no_part, ...); "decision" said nothing.
            reason = a.detail if a.reason == "decision" and a.detail else a.reason
            line = f"{a.action.upper():6s} part={a.part_id} reason={reason}" + (f" seq={a.seq}" if a.seq else "")
            with out_lock:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

        gate = Gate(args.deadline, actuate=actuate)
        client = GateClient(settings, gate, client_id=args.client_id, follow_triggers=args.follow_triggers)
        client.start()
    except (MqttConfigError, ValueError) as exc:
        log.error(str(exc))
        return 2
    try:
        if not client.connected.wait(5):
            log.warning("broker not reachable: every part is rejected until it is",
                        extra={"host": args.host, "port": args.port})
        elif not gate.wait_online(args.wait_online):
            log.warning("daemon not online: every part is rejected until it is", extra={"prefix": args.prefix})
        for line in sys.stdin:
            part_id = line.strip()
            if not part_id:
                continue
            try:
                client.expect(part_id, send_trigger=args.send_triggers)
            except ContractError as exc:
                log.error("bad part id from the sensor", extra={"error": str(exc)})
        end = time.monotonic() + args.deadline + 0.5
        while gate.pending and time.monotonic() < end:
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        client.stop()
        gate.tick()
        gate.link(False)  # nothing leaves the gate unanswered
        sys.stderr.write("gate summary: " + " ".join(f"{k}={v}" for k, v in sorted(gate.counters.items())) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
