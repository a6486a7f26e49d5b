"""The OPC UA transport: a PLC handshake served by the box, beside MQTT (docs/plc.md).

What a PLC sees (edge.delivery.opcua_nodes has every node):

* Trigger: the PLC writes TriggerPartId, then Trigger = true; the box answers TriggerAck =
  true with TriggerError (0 taken) and TriggerAckPartId; the PLC resets Trigger, the box
  resets TriggerAck. A trigger goes through the same intake as MQTT's (TriggerIntake:
  validated, deduplicated, counted) and the daemon's own dedup, so a part announced over
  both is answered once.
* Result: the box writes Result.* and then ResultReady = true; the PLC takes it and writes
  Result.Seq to ResultAckSeq; the box records that, clears ResultReady, presents the next.

The safety rules are MQTT's: every result is a row of the journal, presented only after it
was journaled (the daemon's sink journals, then `offer`s the seqs here), so it is field for
field the MQTT decision with the same seq and never contradicts it; a fault is a reject
(Result.Ok false, Result.ErrorCode); a result presented at its deadline without an
acknowledgement is withdrawn and counted (AcksMissed), one whose deadline passed before it
could be presented is never presented (ResultsExpired); both set Status.ErrorCode. Each
outcome is written to edge.delivery.opcua_record before the PLC sees its effect.

Threads: asyncua runs on its own event loop in the `opcua` thread. The daemon's thread only
calls offer/refresh (call_soon_threadsafe); the PLC's writes are handled on the loop, inside
the write request, so TriggerAck is set and an acknowledgement is durable when the PLC's
write returns. The daemon's trigger() only enqueues.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback

from edge.delivery import opcua_nodes as nodes
from edge.delivery.contract import check_part_id, dumps
from edge.delivery.journal import Journal, JournalError, Row
from edge.delivery.opcua_record import HandshakeRecord
from edge.delivery.opcua_security import Accounts, OpcuaError, secure
from edge.delivery.opcua_settings import OpcuaSection
from edge.delivery.outbox import SEND_MARGIN_S, Counters
from edge.delivery.triggers import TriggerIntake

log = logging.getLogger(__name__)

PUMP_S = 0.02  # how often deadlines are checked when nothing else wakes the pump
STATUS_EVERY_S = 0.5
class OpcuaStation:
    """One camera's node tree and handshake. `trigger(part_id, received_mono)` is the daemon's
    (False: not taken); `status_fn()` its status; `select_recipe(name)` returns None when the
    switch is done, else why it was refused (None as a whole: no recipes configured)."""

    def __init__(self, section: OpcuaSection, journal: Journal, mode: str,
                 trigger: Callable[[str, float], bool], status_fn: Callable[[], Mapping[str, Any]],
                 select_recipe: Callable[[str], str | None] | None = None, dedup: int = 10_000) -> None:
        self.section = section
        self.journal = journal
        self.mode = mode
        self._trigger = trigger
        self._status_fn = status_fn
        self._select_recipe = select_recipe
        self.counters = Counters()
        self.intake = TriggerIntake(self.counters, 1024, dedup)
        self.record = HandshakeRecord(section.state_dir / "handshake.sqlite", journal.last_seq + 1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._ids: dict[str, ua.NodeId] = {}
        self._queue: deque[int] = deque()
        self._queued: set[int] = set()
        self._presented: Row | None = None
        self._last_acked = 0
        self._trigger_high = False
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    # -- the daemon's side (any thread) ---------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> None:
        logging.getLogger("asyncua").setLevel(max(logging.WARNING, log.getEffectiveLevel()))  # its INFO is noise
        host, port = self.section.host_port
        with socket.socket() as probe:  # asyncua only logs a bind error; say it here, by key
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise OpcuaError(f"opcua.listen {self.section.listen}: cannot listen ({exc.strerror or exc})") from None
        self._thread = threading.Thread(target=self._run, name="opcua", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise OpcuaError(f"opcua: the server did not start within {timeout_s:g} s")
        if self._start_error is not None:
            raise OpcuaError(f"opcua: {self._start_error}") from self._start_error
        log.info("opcua server listening", extra={"endpoint": self.endpoint, "camera": self.section.camera,
                                                  "security": ",".join(self.section.security),
                                                  "users": len(self.section.users), "anonymous": self.section.anonymous})

    def offer(self, seqs: list[int]) -> None:
        """Journaled decisions to present, in order (called after the journal has them)."""
        loop = self._loop
        if loop is not None and seqs:
            loop.call_soon_threadsafe(self._enqueue, list(seqs))

    def refresh(self) -> None:
        """Publish the status now (a camera fault must reach Ready at once)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        self._stopping = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
        log.info("opcua server stopped", extra=self.stats())
        self.record.close()

    def stats(self) -> dict[str, int]:
        return {**self.counters.snapshot(), **{f"outcome_{k}": v for k, v in self.record.counts().items()}}

    def faults(self) -> list[str]:
        return []

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:
            if not self._started.is_set():
                self._start_error = exc
                self._started.set()
            else:
                log.exception("opcua server ended")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        server = await self._build()
        async with server:
            for seq in self.record.open_seqs(self.journal.last_seq):  # a restart: what the PLC has not taken
                self._enqueue([seq])
            await self._publish_status()
            self._started.set()
            await self._pump()
            self._stopping = True
            await self._write({"Ready": False, "Status.State": "stopping"})

    async def _build(self) -> Server:
        s = self.section
        passwords = {}
        for u in s.users:
            try:
                passwords[u.name] = u.password()
            except (OSError, KeyError) as exc:
                raise OpcuaError(f"opcua.users {u.name}: cannot read the password: {exc}") from None
        server = Server(user_manager=Accounts(passwords, s.anonymous != "none"))
        await server.init()
        self._server = server
        host, port = s.host_port
        self.endpoint = f"opc.tcp://{host}:{port}/edge-inspect"
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"edge-inspect {s.camera}")
        app_uri = f"{s.namespace}:{socket.gethostname()}:{s.camera}"
        await server.set_application_uri(app_uri)
        await secure(server, s, app_uri)
        ns = await server.register_namespace(s.namespace)
        root = await server.nodes.objects.add_folder(ua.NodeId("EdgeInspect", ns), "EdgeInspect")
        cam = await root.add_object(ua.NodeId(s.camera, ns), s.camera)
        parents: dict[str, Any] = {"": cam}
        for var in nodes.VARS:
            folder, _, name = var.path.rpartition(".")
            if folder not in parents:
                parents[folder] = await cam.add_object(ua.NodeId(f"{s.camera}.{folder}", ns), folder)
            nid = ua.NodeId(f"{s.camera}.{var.path}", ns)
            node = await parents[folder].add_variable(nid, name, nodes.variant(var.kind, nodes.initial(var.kind)))
            if var.writable:
                await node.set_writable()
            self._ids[var.path] = nid
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_write)
        await self._write({"Status.Mode": self.mode})
        return server

    async def _pump(self) -> None:
        """Present results one at a time, withdraw one at its deadline, keep the status fresh."""
        assert self._wake is not None and self._stop is not None
        next_status = 0.0
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), PUMP_S)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._step()
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + STATUS_EVERY_S
                    await self._publish_status()
            except JournalError as exc:
                log.error("opcua: cannot read the journal; retrying", extra={"error": str(exc)})
            except Exception:
                log.exception("opcua pump pass failed; retrying")

    async def _step(self) -> None:
        now = time.time()
        shown = self._presented
        if shown is not None and now >= shown.deadline_ts:
            self.record.record(shown.seq, shown.part_id, "ack_missed")
            self._presented = None
            await self._write({"ResultReady": False})
            await self._error(nodes.ACK_MISSED, "acks_missed", shown)
        while self._presented is None and self._queue:
            seq = self._queue.popleft()
            self._queued.discard(seq)
            row = self.journal.get(seq)
            if row is None:
                continue
            if now >= row.deadline_ts - SEND_MARGIN_S:
                self.record.record(row.seq, row.part_id, "expired")
                await self._error(nodes.RESULT_EXPIRED, "results_expired", row)
                continue
            await self._write(nodes.result_values(row.decision, row.seq))
            await self._write({"ResultReady": True})  # after Result.*: a PLC reading both in one Read sees one part
            self._presented = row
            self.counters.count("results_presented")

    async def _error(self, code: int, counter: str, row: Row) -> None:
        n = self.counters.count(counter)
        await self._write({"Status.ErrorCode": code, "Status.ErrorText": f"{nodes.BOX_ERRORS[code]} (seq {row.seq}, "
                           f"part {row.part_id})"[:256]})
        self.counters.log_limited(log, counter, logging.WARNING, "opcua: " + nodes.BOX_ERRORS[code],
                                  {"seq": row.seq, "part_id": row.part_id, "count": n, "code": code})

    def _enqueue(self, seqs: list[int]) -> None:
        for seq in seqs:
            if seq not in self._queued and (self._presented is None or self._presented.seq != seq):
                self._queue.append(seq)
                self._queued.add(seq)
        if self._wake is not None:
            self._wake.set()

    async def _write(self, values: Mapping[str, Any]) -> None:
        assert self._server is not None or not self._ids
        for path, value in values.items():
            var = nodes.BY_PATH[path]
            await self._server.write_attribute_value(self._ids[path],  # type: ignore[union-attr]
                                                     ua.DataValue(nodes.variant(var.kind, value)))

    async def _read(self, path: str) -> Any:
        assert self._server is not None
        return (await self._server.get_node(self._ids[path]).read_value())

    async def _publish_status(self) -> None:
        try:
            st = dict(self._status_fn())
        except Exception:
            log.exception("opcua: status_fn failed")
            st = {}
        fault = str((st.get("camera") or {}).get("fault") or "")
        c = self.counters
        await self._write({
            "Ready": not self._stopping and self.mode == "trigger" and not fault,
            "Status.State": "stopping" if self._stopping else ("degraded" if fault else "inspecting"),
            "Status.ModelId": str(st.get("model") or ""), "Status.CameraFault": fault,
            "Status.Parts": int(st.get("parts", 0)), "Status.Accepted": int(st.get("accept", 0)),
            "Status.Rejected": int(st.get("reject", 0)), "Status.Faults": int(st.get("faults", 0)),
            "Status.TriggersTaken": c.get("triggers_taken"), "Status.TriggersRefused": c.get("triggers_refused"),
            "Status.ResultsAcked": c.get("results_acked"), "Status.AcksMissed": c.get("acks_missed"),
            "Status.ResultsExpired": c.get("results_expired"), "Status.AcksIgnored": c.get("acks_ignored"),
            "Status.UptimeS": float(st.get("uptime_s", 0.0)), "RecipeActive": str(st.get("recipe") or ""),
        })

    # -- the PLC's writes (on the loop, inside its write request) ---------------------------
    async def _on_write(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        if not event.is_external:
            return
        for item, status in zip(event.request_params.NodesToWrite, event.response_params, strict=False):
            if not status.is_good() or item.AttributeId != ua.AttributeIds.Value:
                continue
            path = next((p for p, nid in self._ids.items() if nid == item.NodeId), None)
            value = item.Value.Value.Value if item.Value and item.Value.Value else None
            try:
                if path == "Trigger":
                    await self._on_trigger(bool(value))
                elif path == "ResultAckSeq":
                    await self._on_ack(int(value or 0))
                elif path == "RecipeRequest":
                    await self._on_recipe(str(value or ""))
            except Exception:
                log.exception("opcua: handling a PLC write failed", extra={"node": path})

    async def _on_trigger(self, high: bool) -> None:
        if not high:
            self._trigger_high = False
            await self._write({"TriggerAck": False})
            return
        if self._trigger_high:  # no rising edge: the PLC did not reset Trigger after the last TriggerAck
            self.counters.count("triggers_not_reset")
            return
        self._trigger_high = True
        received = time.monotonic()
        part_id = str(await self._read("TriggerPartId") or "")
        code = nodes.TRIGGER_OK
        if self._stopping:
            code = nodes.TRIGGER_STOPPING
        elif self.intake.take(dumps({"part_id": part_id}).encode(), False, f"opcua:{self.section.camera}") is None:
            code = nodes.TRIGGER_BAD_PART_ID if _bad_id(part_id) else nodes.TRIGGER_REPEATED
        elif not self._trigger(part_id, received):
            code = nodes.TRIGGER_NOT_TRIGGER_MODE if self.mode != "trigger" else nodes.TRIGGER_REPEATED
        self.counters.count("triggers_taken" if code == nodes.TRIGGER_OK else "triggers_refused")
        await self._write({"TriggerAckPartId": part_id[:128], "TriggerError": code, "TriggerAck": True})
        if code != nodes.TRIGGER_OK:
            self.counters.log_limited(log, f"opcua_trigger_{code}", logging.WARNING,
                                      "opcua trigger refused: " + nodes.TRIGGER_ERRORS[code],
                                      {"part_id": part_id[:128], "code": code})

    async def _on_ack(self, seq: int) -> None:
        shown = self._presented
        if shown is not None and seq == shown.seq:
            self.record.record(shown.seq, shown.part_id, "acked")  # durable before ResultReady falls
            self._presented, self._last_acked = None, seq
            self.counters.count("results_acked")
            await self._write({"ResultReady": False})
            assert self._wake is not None
            self._wake.set()
        elif seq != self._last_acked and seq != 0:  # a cyclic re-write of the last ack is no news
            n = self.counters.count("acks_ignored")
            await self._write({"Status.ErrorCode": nodes.ACK_IGNORED,
                               "Status.ErrorText": f"{nodes.BOX_ERRORS[nodes.ACK_IGNORED]} (ResultAckSeq {seq})"})
            self.counters.log_limited(log, "opcua_ack_ignored", logging.WARNING, "opcua: " +
                                      nodes.BOX_ERRORS[nodes.ACK_IGNORED],
                                      {"ack_seq": seq, "presented": shown.seq if shown else None, "count": n})

    async def _on_recipe(self, name: str) -> None:
        if self._select_recipe is None:
            why: str | None = "no recipes are configured"
            code = nodes.RECIPE_NONE_CONFIGURED
        else:
            why = self._select_recipe(name)
            code = nodes.RECIPE_OK if why is None else nodes.RECIPE_UNKNOWN
        self.counters.count("recipe_requests_taken" if why is None else "recipe_requests_refused")
        await self._write({"RecipeError": code})
        if why is not None:
            await self._write({"Status.ErrorCode": nodes.RECIPE_REFUSED,
                               "Status.ErrorText": f"recipe {name[:64]!r} refused: {why}"[:256]})
        await self._publish_status()


def _bad_id(part_id: str) -> bool:
    try:
        check_part_id(part_id)
    except ValueError:
        return True
    return False


class WithOpcua:
    """The daemon's sink: the MQTT publisher journals (and sends) first, then the station presents
    the same rows, so the PLC's result and the gate's decision are one journal row."""

    def __init__(self, publisher: Any, station: OpcuaStation) -> None:
        self.publisher = publisher
        self.station = station

    def publish_decision(self, decision: dict[str, Any], deadline_ts: float | None = None) -> int:
        return self.publish_decisions([(decision, deadline_ts)])[0]

    def publish_decisions(self, items: list[tuple[Mapping[str, Any], float | None]]) -> list[int]:
        seqs: list[int] = self.publisher.publish_decisions(items)
        self.station.offer(seqs)
        return seqs

    def faults(self) -> list[str]:
        return list(self.publisher.faults()) + self.station.faults()
