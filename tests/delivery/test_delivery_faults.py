"""Delivery faults the operator must see, and that must never multiply messages (issue 18.4, 18.5):
a journal that cannot record a delivery (disk full) and a paho network thread that died.
Real Mosquitto, the real Publisher and Journal (SQLite refusing writes for real)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from broker import Mosquitto
from conftest_mqtt import (  # noqa: F401 - fixtures
    Collector,
    collectors,
    decision,
    make_publisher,
    mosquitto,
    prefix,
    retained,
)

from edge.delivery.contract import Topics
from edge.delivery.journal import Journal
from edge.delivery.mqtt import Publisher


def refuse_writes(journal: Journal, on: bool) -> None:
    """SQLite's own switch: every write fails (SQLITE_READONLY) as on a full or read-only disk."""
    journal._db.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")


def test_a_delivery_the_journal_cannot_record_is_sent_once_and_is_a_visible_fault(
        mosquitto: Mosquitto, make_publisher: Callable[..., Publisher], collectors: Callable[..., Collector],
        prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    t = Topics(prefix)
    sub = collectors(mosquitto.port, [t.decision, t.late])
    journal = Journal(tmp_path / "journal.db")
    pub = make_publisher(mosquitto.port, prefix, journal=journal, resend_interval_s=0.3, decision_deadline_s=2.0)
    assert pub.wait_connected(10)
    seq = pub.publish_decision(decision("before"))
    sub.wait_count(t.decision, 1, 10)
    assert pub.flush(5)
    with caplog.at_level(logging.INFO, logger="edge.delivery"):
        mosquitto.proc.send_signal(19)  # SIGSTOP: the PUBACK waits, the row stays pending
        seq = pub.publish_decision(decision("full"))
        refuse_writes(journal, True)  # the disk fills after the decision was journaled
        mosquitto.proc.send_signal(18)  # SIGCONT: the broker acknowledges; the mark fails
        sub.wait_count(t.decision, 2, 10)
        end = time.monotonic() + 8  # well past the deadline and many resend passes
        while time.monotonic() < end and "journal_unwritable" not in pub.faults():
            time.sleep(0.05)
        assert pub.faults() == ["journal_unwritable"]
        time.sleep(4)
        copies = [m for m in sub.on(t.decision) if m.json["part_id"] == "full"]
        late = [m for m in sub.on(t.late) if m.json["part_id"] == "full"]
        assert len(copies) == 1 and not late, (len(copies), len(late))
        assert pub.stats()["journal_mark_failed"] == 1
        pub.publish_status()
        end = time.monotonic() + 10  # the status goes out on paho's thread: read the retained copy until it has
        while time.monotonic() < end and ((st := retained(mosquitto.port, t.status)) is None
                                          or st.json["delivery_faults"] != ["journal_unwritable"]):
            time.sleep(0.2)
        assert st is not None and st.json["delivery_faults"] == ["journal_unwritable"]
        refuse_writes(journal, False)  # space is back
        end = time.monotonic() + 5
        while time.monotonic() < end and pub.faults():
            time.sleep(0.05)
        assert pub.faults() == [] and not journal.is_pending(seq)
    assert journal.get(seq).state == "delivered"
    errors = [r for r in caplog.records if "journal cannot record deliveries" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR  # once, not once per pass
    assert any("journal writable again" in r.getMessage() for r in caplog.records)
    assert [m.json["part_id"] for m in sub.on(t.decision)].count("full") == 1


def test_mqtt_strings_paho_cannot_send_are_refused_before_any_thread_starts(tmp_path: Path) -> None:
    from conftest_mqtt import settings  # noqa: PLC0415

    from edge.delivery.mqtt_settings import MqttConfigError  # noqa: PLC0415

    for bad in ("x" * 70_000, "cam\x001"):
        with pytest.raises(MqttConfigError, match="client_id: at most 65535 bytes"):
            settings(1883, "test/cam1", client_id=bad)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_network_thread_is_a_fault_that_recovers(
        mosquitto: Mosquitto, make_publisher: Callable[..., Publisher], collectors: Callable[..., Collector],
        prefix: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    t = Topics(prefix)
    sub = collectors(mosquitto.port, [t.decision])
    pub = make_publisher(mosquitto.port, prefix, resend_interval_s=0.3)
    pub.on_trigger(lambda trig: None)
    assert pub.wait_ready(10)
    first = pub._client

    def boom(client: object, userdata: object, msg: object) -> None:  # a bug inside paho's thread
        raise RuntimeError("callback bug")

    # Fault injection: paho's thread ends on an exception it does not suppress, as it does on an
    # internal error (e.g. struct.error packing an oversized field): one exception, once.
    first.suppress_exceptions = False
    first.message_callback_add(t.trigger, boom)
    sender = Collector(mosquitto.port, [t.status])  # any connected client
    sender.client.publish(t.trigger, b'{"part_id": "x"}', qos=1).wait_for_publish(5)
    sender.close()
    with caplog.at_level(logging.INFO, logger="edge.delivery"):
        end = time.monotonic() + 10
        while time.monotonic() < end and pub.stats().get("mqtt_thread_died", 0) == 0:
            time.sleep(0.05)
        assert pub.stats().get("mqtt_thread_died") == 1
        assert pub.wait_connected(10) and pub._client is not first
    died = [r for r in caplog.records if "network thread died" in r.getMessage()]
    assert died and "RuntimeError: callback bug" in died[0].__dict__["error"]
    assert pub.faults() == []  # connected again: recovered
    pub.publish_decision(decision("after"))
    assert [m.json["part_id"] for m in sub.wait_count(t.decision, 1, 10)] == ["after"]
