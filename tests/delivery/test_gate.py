"""The reference gate: reject by default, first decision wins, offline and link loss reject."""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto
from conftest_mqtt import decision, make_publisher, mosquitto, prefix, settings  # noqa: F401 - fixtures

from edge.delivery import gate_cli as gate_mod
from edge.delivery.contract import (
    ContractError,
    Topics,
    parse_decision,
    parse_status,
    parse_trigger,
)
from edge.delivery.gate import Gate, GateAction
from edge.delivery.gate_cli import GateClient

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def msg(part_id: str, verdict: str = "accept", seq: int = 1) -> dict:
    return {**decision(part_id, verdict), "seq": seq, "ts": "2025-06-01T12:00:00.000Z"}


ONLINE = {"state": "online", "version": "0.1.0"}
OFFLINE = {"state": "offline", "reason": "connection lost"}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def acted() -> list[GateAction]:
    return []


@pytest.fixture
def gate(clock: Clock, acted: list[GateAction]) -> Gate:
    g = Gate(2.0, clock=clock, actuate=acted.append)
    g.on_status(ONLINE)
    return g


def test_accepts_on_time_and_rejects_when_no_decision_by_the_deadline(gate: Gate, clock: Clock,
                                                                     acted: list[GateAction]) -> None:
    assert gate.expect("p1") is None and gate.expect("p2") is None
    clock.t += 1.0
    a = gate.on_decision(msg("p1", "accept", seq=7))
    assert a is not None and (a.part_id, a.action, a.reason, a.seq) == ("p1", "accept", "decision", 7)
    assert gate.tick() == [] and gate.pending == ["p2"]
    clock.t += 1.0  # p2's deadline
    (r,) = gate.tick()
    assert (r.part_id, r.action, r.reason) == ("p2", "reject", "timeout")
    assert [(x.part_id, x.action) for x in acted] == [("p1", "accept"), ("p2", "reject")]
    assert gate.next_deadline() is None


def test_first_decision_wins_and_duplicates_or_late_ones_are_ignored(gate: Gate, clock: Clock,
                                                                    acted: list[GateAction]) -> None:
    gate.expect("p1")
    assert gate.on_decision(msg("p1", "reject", seq=3)).action == "reject"  # type: ignore[union-attr]
    assert gate.on_decision(msg("p1", "reject", seq=3)) is None  # at-least-once re-delivery
    assert gate.on_decision(msg("p1", "accept", seq=4)) is None  # a contradicting one never flips it
    gate.expect("p2")
    clock.t += 2.5
    gate.tick()
    assert gate.on_decision(msg("p2", "accept", seq=5)) is None  # after the timeout reject
    assert [(x.part_id, x.action, x.reason) for x in acted] == [("p1", "reject", "decision"),
                                                                ("p2", "reject", "timeout")]
    assert gate.counters["duplicates"] == 2 and gate.counters["late_decisions"] == 1


def test_offline_status_rejects_pending_and_new_parts_until_online(gate: Gate, acted: list[GateAction]) -> None:
    gate.expect("p1")
    gate.expect("p2")
    rejected = gate.on_status(OFFLINE)
    assert [(a.part_id, a.action, a.reason) for a in rejected] == [("p1", "reject", "offline"),
                                                                   ("p2", "reject", "offline")]
    a = gate.expect("p3")
    assert a is not None and (a.action, a.reason) == ("reject", "offline")
    assert gate.on_decision(msg("p1", "accept")) is None  # too late: p1 is gone
    gate.on_status(ONLINE)
    gate.expect("p4")
    assert gate.on_decision(msg("p4", "accept")).action == "accept"  # type: ignore[union-attr]


def test_no_status_yet_garbage_status_or_own_link_down_all_reject(clock: Clock) -> None:
    g = Gate(2.0, clock=clock)
    assert g.expect("p0").reason == "offline"  # type: ignore[union-attr]  # status unknown = not online
    g.on_status(ONLINE)
    g.expect("p1")
    assert [a.reason for a in g.on_status(b"{not json")] == ["offline"]
    g.on_status(ONLINE)
    g.expect("p2")
    assert [(a.part_id, a.reason) for a in g.link(False)] == [("p2", "link_down")]
    assert g.expect("p3").reason == "link_down"  # type: ignore[union-attr]
    g.link(True)
    assert g.expect("p4").reason == "offline"  # type: ignore[union-attr]  # must hear `online` again
    g.on_status(ONLINE)
    assert g.expect("p5") is None


def test_invalid_decision_is_ignored_and_the_part_times_out(gate: Gate, clock: Clock) -> None:
    gate.expect("p1")
    for bad in (b"garbage", b'{"part_id": "p1", "decision": "accept"}', {**msg("p1"), "decision": "yes"},
                {**msg("p1"), "seq": 0}, {**msg("p1"), "p_defect": "0.1"}):
        assert gate.on_decision(bad) is None
    clock.t += 2.0
    assert [(a.part_id, a.reason) for a in gate.tick()] == [("p1", "timeout")]
    assert gate.counters["invalid_decisions"] == 5


def test_decision_before_the_part_is_announced_is_used_within_the_deadline(gate: Gate, clock: Clock) -> None:
    assert gate.on_decision(msg("early", "accept", seq=9)) is None
    clock.t += 1.0
    a = gate.expect("early")
    assert a is not None and (a.action, a.seq) == ("accept", 9)
    gate.on_decision(msg("stale", "accept"))
    clock.t += 3.0
    gate.tick()  # forgets decisions nobody announced in time
    assert gate.expect("stale") is None and gate.pending == ["stale"]


def test_decision_arriving_after_the_deadline_is_a_timeout_even_before_tick(gate: Gate, clock: Clock,
                                                                           acted: list[GateAction]) -> None:
    """The ticker may run late; the deadline must hold on the decision path too."""
    gate.expect("p1")
    clock.t += 2.5  # past p1's deadline, no tick() yet
    a = gate.on_decision(msg("p1", "accept", seq=1))
    assert a is not None and (a.part_id, a.action, a.reason) == ("p1", "reject", "timeout")
    assert gate.on_decision(msg("p1", "accept", seq=1)) is None  # a re-delivered copy: still late, never flips
    assert gate.tick() == [] and gate.pending == []
    gate.expect("p2")
    clock.t += 2.0  # exactly at p2's deadline, where tick() would reject too
    a = gate.on_decision(msg("p2", "accept", seq=2))
    assert a is not None and (a.action, a.reason) == ("reject", "timeout")
    assert [(x.part_id, x.action, x.reason) for x in acted] == [("p1", "reject", "timeout"),
                                                                ("p2", "reject", "timeout")]
    assert gate.counters["late_decisions"] == 3 and gate.counters["reject_timeout"] == 2
    assert gate.counters["accept_decision"] == 0 and gate.counters["duplicates"] == 0


def test_early_decision_needs_the_daemon_online_and_the_link_up_throughout(clock: Clock) -> None:
    g = Gate(2.0, clock=clock)
    g.on_decision(msg("p0", seq=1))  # no status yet: the daemon is not known to be online
    g.on_status(ONLINE)
    assert g.expect("p0") is None and g.pending == ["p0"]  # must wait for its own decision
    clock.t += 2.0
    g.tick()
    for i, lose in enumerate((lambda: g.on_status(OFFLINE), lambda: g.on_status(b"{not json"),
                              lambda: (g.link(False), g.link(True)))):
        g.on_status(ONLINE)
        g.on_decision(msg(f"p1-{i}", seq=2 + i))  # stored while everything was healthy...
        lose()  # ...then the daemon or the gate's own link was lost
        g.on_status(ONLINE)
        assert g.expect(f"p1-{i}") is None and g.pending == [f"p1-{i}"], i
        clock.t += 2.0
        assert [(a.part_id, a.reason) for a in g.tick()] == [(f"p1-{i}", "timeout")]
    g.link(False)
    g.link(True)  # link back, daemon status not heard again yet
    g.on_decision(msg("p2", seq=9))
    g.on_status(ONLINE)
    assert g.expect("p2") is None and g.pending == ["p2"]
    assert g.counters["accept_decision"] == 0 and g.counters["offline_decisions"] == 2


def test_early_decision_past_its_own_deadline_is_never_used(gate: Gate, clock: Clock) -> None:
    gate.on_decision(msg("p1", seq=1))
    clock.t += 2.0  # the stored decision is exactly as old as a deadline; no tick() has purged it
    assert gate.expect("p1") is None and gate.pending == ["p1"]
    gate.on_decision(msg("p2", seq=2))
    clock.t += 2.0
    assert [a.part_id for a in gate.tick()] == ["p1"]
    assert gate.expect("p2") is None and gate.pending == ["p2"]
    assert gate.counters["accept_decision"] == 0


OUT_OF_RANGE_TIMES = [1e20, 1e308, 2**63, 10**400, 253402300800, "0001-01-01T00:00:00+14:00",
                      "9999-12-31T23:59:59.999-14:00"]


@pytest.mark.parametrize("field", ["ts", "frame_ts"])
@pytest.mark.parametrize("value", OUT_OF_RANGE_TIMES, ids=lambda v: str(v)[:24])
def test_out_of_range_decision_times_are_contract_errors(gate: Gate, field: str, value: object) -> None:
    with pytest.raises(ContractError, match=field):
        parse_decision(json.dumps({**msg("p1"), field: value}))
    gate.expect("p1")
    assert gate.on_decision(json.dumps({**msg("p1"), field: value}).encode()) is None
    assert gate.counters["invalid_decisions"] == 1 and gate.pending == ["p1"]


def test_numbers_beyond_float_range_are_contract_errors(gate: Gate, acted: list[GateAction]) -> None:
    huge = "9" * 400  # a valid JSON integer that no float can hold
    for bad in (f'{{"part_id": "x", "ts": {huge}}}', f'{{"part_id": "x", "ts": -{huge}}}'):
        with pytest.raises(ContractError):
            parse_trigger(bad, 0, 0)
    for key in ("p_defect", "latency_ms", "threshold"):
        with pytest.raises(ContractError, match=key):
            parse_decision(json.dumps({**msg("p1"), key: 10**400}))
    too_many_digits = '{"state": "online", "uptime_s": ' + "9" * 5000 + "}"  # int() digit limit
    with pytest.raises(ContractError):
        parse_status(too_many_digits)
    gate.expect("p1")
    assert gate.on_decision(b'{"seq": ' + b"1" * 5000 + b"}") is None
    assert [(a.part_id, a.reason) for a in gate.on_status(too_many_digits)] == [("p1", "offline")]  # unreadable


def test_unserialisable_mapping_is_an_invalid_message_not_a_crash(gate: Gate) -> None:
    gate.expect("p1")
    assert gate.on_decision({**msg("p1"), "p_defect": float("nan")}) is None
    assert gate.on_decision({**msg("p1"), "extra": object()}) is None
    assert gate.counters["invalid_decisions"] == 2 and gate.pending == ["p1"]
    assert [a.reason for a in gate.on_status({"state": "online", "uptime_s": float("nan")})] == ["offline"]


def test_repeated_part_ids(gate: Gate) -> None:
    gate.expect("p1")
    assert gate.expect("p1") is None and gate.pending == ["p1"]  # same part announced twice: one deadline
    gate.on_decision(msg("p1", "accept"))
    a = gate.expect("p1")  # id reused after it was handled: cannot trust any decision for it
    assert a is not None and (a.action, a.reason) == ("reject", "repeated_part_id")


def test_actuator_failure_does_not_break_the_gate(clock: Clock) -> None:
    def broken(a: GateAction) -> None:
        raise RuntimeError("relay stuck")

    g = Gate(1.0, clock=clock, actuate=broken)
    g.on_status(ONLINE)
    g.expect("p1")
    assert g.on_decision(msg("p1")).action == "accept"  # type: ignore[union-attr]


def test_gate_end_to_end_with_a_daemon_that_gets_killed(mosquitto: Mosquitto, prefix: str, tmp_path: Path) -> None:
    """Trigger mode over a real broker: accept, reject, timeout, then SIGKILL -> offline rejects."""
    acted: list[GateAction] = []
    cond = threading.Condition()

    def actuate(a: GateAction) -> None:
        with cond:
            acted.append(a)
            cond.notify_all()

    def wait_for(part_id: str, timeout: float = 5.0) -> GateAction:
        with cond:
            assert cond.wait_for(lambda: any(a.part_id == part_id for a in acted), timeout), f"no action for {part_id}"
            return next(a for a in acted if a.part_id == part_id)

    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "daemon_proc.py"), str(mosquitto.port), prefix,
                             str(tmp_path / "j.db")], stdout=subprocess.PIPE, text=True)
    g = Gate(1.0, actuate=actuate)
    client = GateClient(settings(mosquitto.port, prefix, protocol="auto"), g, client_id="gate-under-test")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        client.start()
        assert client.connected.wait(5)
        assert g.wait_online(5)  # the retained `online` status
        client.expect("good-1", send_trigger=True)
        client.expect("bad-1", send_trigger=True)
        client.expect("silent-1", send_trigger=True)  # the daemon never answers this one
        assert (wait_for("good-1").action, wait_for("good-1").reason) == ("accept", "decision")
        assert (wait_for("bad-1").action, wait_for("bad-1").reason) == ("reject", "decision")
        assert (wait_for("silent-1").action, wait_for("silent-1").reason) == ("reject", "timeout")
        g.deadline_s = 30.0
        client.expect("silent-2", send_trigger=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        assert (wait_for("silent-2").action, wait_for("silent-2").reason) == ("reject", "offline")  # the LWT
        a = client.expect("after-death", send_trigger=True)
        assert a is not None and (a.action, a.reason) == ("reject", "offline")
    finally:
        client.stop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """main() installs its own log handler on the root logger; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_rejects_every_part_when_no_daemon_is_there(mosquitto: Mosquitto, prefix: str,
                                                        monkeypatch: pytest.MonkeyPatch, keep_logging: None,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("part-1\n\npart-2\n"))
    rc = gate_mod.main(["--host", "127.0.0.1", "--port", str(mosquitto.port), "--prefix", prefix,
                        "--deadline", "0.3", "--send-triggers", "--wait-online", "0.2"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out.splitlines() == ["REJECT part=part-1 reason=offline", "REJECT part=part-2 reason=offline"]
    assert "parts=2" in err and "reject_offline=2" in err


def edge_gate_cmd() -> list[str]:
    script = Path(sys.executable).parent / "edge-gate"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edge.delivery.gate_cli"]


def test_cli_prints_the_decisions_own_reason(mosquitto: Mosquitto, prefix: str, make_publisher) -> None:
    """`REJECT ... reason=decision` hid a fail-safe reject: the line shows `fault:no_part` as the daemon said."""
    pub = make_publisher(mosquitto.port, prefix, status_fn=lambda: {"model": "0123456789ab"})
    assert pub.wait_ready(10)
    answers = {"P-1": ("reject", "fault:no_part"), "P-2": ("accept", "model"), "P-3": ("reject", "model")}
    triggers: queue.Queue[str] = queue.Queue()
    pub.on_trigger(lambda t: triggers.put(t.part_id))  # answered off the MQTT thread, as the daemon does

    def answer() -> None:
        while (pid := triggers.get()) != "":
            if pid in answers:
                verdict, reason = answers[pid]
                pub.publish_decision({**decision(pid, verdict), "reason": reason})

    worker = threading.Thread(target=answer, daemon=True)
    worker.start()
    try:
        r = subprocess.run([*edge_gate_cmd(), "--host", "127.0.0.1", "--port", str(mosquitto.port), "--prefix",
                            prefix, "--deadline", "3", "--send-triggers", "--wait-online", "5",
                            "--client-id", f"gate-{prefix}"],
                           input="P-1\nP-2\nP-3\nsilent-1\n", capture_output=True, text=True, timeout=60)
    finally:
        triggers.put("")
        worker.join(5)
    assert r.returncode == 0, r.stderr
    lines = sorted(line.split(" seq=")[0] for line in r.stdout.splitlines())
    assert lines == ["ACCEPT part=P-2 reason=model", "REJECT part=P-1 reason=fault:no_part",
                     "REJECT part=P-3 reason=model", "REJECT part=silent-1 reason=timeout"], r.stdout
    assert all(" seq=" in line for line in r.stdout.splitlines() if "silent" not in line)
    assert "accept_decision=1" in r.stderr and "reject_decision=2" in r.stderr and "reject_timeout=1" in r.stderr


def test_cli_help_describes_the_gate_and_every_option_with_its_default() -> None:
    r = subprocess.run([*edge_gate_cmd(), "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "400"})  # argparse would wrap inside edge-inspect-...
    assert r.returncode == 0 and r.stderr == ""
    text = " ".join(r.stdout.split())
    assert "`Gate` is the pure logic" not in text  # the module docstring was the help
    assert "Reads part ids from stdin" in text and "REJECT part=P-2 reason=fault:no_part" in text
    assert "Exit status: 0" in text
    for option, default in (("--host", "localhost"), ("--port", "1883"), ("--prefix", "casting/line1/cam1"),
                            ("--deadline", "2.0"), ("--protocol", "auto"), ("--wait-online", "1.0"),
                            ("--client-id", "edge-inspect-<hostname>-gate")):
        assert re.search(rf"{option} \S+ .*?\(default: {re.escape(default)}\)", text), option
    for action in gate_mod.build_parser()._actions:
        assert action.help and len(action.help) > 10, action.option_strings


def test_cli_bad_settings_exit_2(keep_logging: None) -> None:
    assert gate_mod.main(["--prefix", "a/#"]) == 2
    assert gate_mod.main(["--username", "u", "--password-env", "EDGE_GATE_NO_SUCH_VAR"]) == 2


def test_topics_helper() -> None:
    t = Topics("casting/line1/cam1")
    assert (t.decision, t.late, t.status, t.trigger) == (
        "casting/line1/cam1/decision", "casting/line1/cam1/decision/late", "casting/line1/cam1/status",
        "casting/line1/cam1/trigger")

