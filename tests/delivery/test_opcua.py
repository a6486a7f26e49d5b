"""The OPC UA handshake against the real daemon (subprocess), a real asyncua client as the PLC
over loopback and a real Mosquitto beside it: each part triggered once is answered once, on
both wires with one journal row; faults, a missed acknowledgement and restarts of either side
are explicit (docs/plc.md)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, free_port
from conftest_mqtt import Collector, mosquitto, require_mosquitto  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, still_part_video, write_config
from opcua_plc import Plc, run, url_of

from edge.delivery import opcua_nodes as nodes
from edge.delivery.contract import Topics

pytest.importorskip("asyncua")


@pytest.fixture(autouse=True)
def need_bundle() -> None:
    require_mosquitto()
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")


def box_config(tmp: Path, broker_port: int, prefix: str, opcua_port: int, deadline_s: float) -> Path:
    return write_config(tmp, broker_port, prefix, still_part_video(tmp / "still.avi"), camera={"loop": True},
                        inspect={"mode": "trigger", "trigger_wait_s": 1.0, "max_trigger_age_s": 30},
                        mqtt={"decision_deadline_s": deadline_s},
                        opcua={"enabled": True, "listen": f"127.0.0.1:{opcua_port}", "security": ["none"],
                               "anonymous": "write", "state_dir": str(tmp / "opcua")})


def test_the_plc_handshake_answers_each_part_once_as_mqtt_does(mosquitto: Mosquitto,  # noqa: F811
                                                                tmp_path: Path) -> None:
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    port = free_port()
    sub = Collector(mosquitto.port, [t.decision, t.late])
    seen: dict[str, dict[str, Any]] = {}

    async def plc() -> None:
        async with Plc(url_of(port)) as p:
            await p.wait(lambda v: v["Ready"], "Ready")
            # Taken, judged, acknowledged.
            assert await p.trigger("P-1") == nodes.TRIGGER_OK
            seen["P-1"] = r = await p.result("P-1")
            assert (r["Result.Ok"], r["Result.Decision"], r["Result.Reason"], r["Result.ErrorCode"]) == (
                False, "reject", "model", 0), r
            await p.ack(r["Result.Seq"])
            await p.wait(lambda v: not v["ResultReady"] and v["Status.ResultsAcked"] == 1,
                         "ResultReady", "Status.ResultsAcked")
            # A repeated part id and an empty one are refused, explicitly.
            assert await p.trigger("P-1") == nodes.TRIGGER_REPEATED
            assert await p.trigger("") == nodes.TRIGGER_BAD_PART_ID
            # The PLC's client restarts while a result waits: a new session finds the same result.
            assert await p.trigger("P-2") == nodes.TRIGGER_OK
            first = await p.result("P-2")
        async with Plc(url_of(port)) as p:
            seen["P-2"] = again = await p.result("P-2")
            assert again["Result.Seq"] == first["Result.Seq"]
            await p.ack(again["Result.Seq"])
            # Not acknowledged: withdrawn at its deadline, and said so.
            assert await p.trigger("P-3") == nodes.TRIGGER_OK
            seen["P-3"] = await p.result("P-3")
            got = await p.wait(lambda v: not v["ResultReady"] and v["Status.AcksMissed"] == 1,
                               "ResultReady", "Status.AcksMissed", "Status.ErrorCode", "Status.ErrorText")
            assert got["Status.ErrorCode"] == nodes.ACK_MISSED and "P-3" in got["Status.ErrorText"], got
            await p.ack(seen["P-3"]["Result.Seq"])  # too late: ignored and counted, never an ack
            await p.wait(lambda v: v["Status.AcksIgnored"] == 1 and v["Status.ErrorCode"] == nodes.ACK_IGNORED,
                         "Status.AcksIgnored", "Status.ErrorCode")
            # A part triggered over MQTT is presented to the PLC too, and cannot be triggered again here.
            sub.client.publish(t.trigger, json.dumps({"part_id": "M-1"}), qos=1)
            seen["M-1"] = m = await p.result("M-1")
            assert await p.trigger("M-1") == nodes.TRIGGER_REPEATED
            await p.ack(m["Result.Seq"])
            await p.wait(lambda v: not v["ResultReady"], "ResultReady")

    try:
        with DaemonProcess(box_config(tmp_path, mosquitto.port, prefix, port, deadline_s=6.0)) as proc:
            run(plc())
            assert sub.wait(lambda ms: len(ms) >= 4, 30)
            out = proc.stop()
        decisions = [m.json for m in sub.messages]
    finally:
        sub.close()
    assert proc.returncode == 0, out[-3000:]
    assert sorted(d["part_id"] for d in decisions) == ["M-1", "P-1", "P-2", "P-3"], decisions  # once each
    for d in decisions:  # one journal row, two wires: never a contradiction
        r = seen[d["part_id"]]
        assert (r["Result.Seq"], r["Result.Decision"], r["Result.Ok"]) == (d["seq"], d["decision"],
                                                                           d["decision"] == "accept"), (r, d)
        assert r["Result.PDefect"] == pytest.approx(d["p_defect"]) and r["Result.ModelId"] == d["model"]
    assert "opcua trigger refused" in out and "withdrawn" in out, out[-3000:]


def test_a_restarted_box_presents_again_only_what_the_plc_did_not_take(mosquitto: Mosquitto,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    port = free_port()
    cfg = box_config(tmp_path, mosquitto.port, prefix, port, deadline_s=120.0)
    seqs: dict[str, int] = {}

    async def trigger_and_leave(part_id: str) -> None:
        async with Plc(url_of(port)) as p:
            assert await p.trigger(part_id) == nodes.TRIGGER_OK
            seqs[part_id] = (await p.result(part_id))["Result.Seq"]

    async def take_it_after_restart() -> None:
        async with Plc(url_of(port)) as p:  # the box crashed with R-1 presented, not acknowledged
            r = await p.result("R-1")
            assert r["Result.Seq"] == seqs["R-1"], r
            await p.ack(r["Result.Seq"])
            await p.wait(lambda v: not v["ResultReady"], "ResultReady")

    async def nothing_taken_comes_back() -> None:
        async with Plc(url_of(port)) as p:
            await p.wait(lambda v: v["Ready"], "Ready")
            assert await p.trigger("R-2") == nodes.TRIGGER_OK
            # R-1 was acknowledged before the restart: were it presented again, it would come first.
            r = await p.result("R-2")
            await p.ack(r["Result.Seq"])
            assert r["Result.Seq"] > seqs["R-1"]

    with DaemonProcess(cfg) as proc:
        run(trigger_and_leave("R-1"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with DaemonProcess(cfg) as proc:
        run(take_it_after_restart())
        out = proc.stop()
        assert proc.returncode == 0, out[-3000:]
    with DaemonProcess(cfg) as proc:
        run(nothing_taken_comes_back())
        out = proc.stop()
        assert proc.returncode == 0, out[-3000:]
