"""The delivery model of one camera's decisions over the journal, independent of the wire.

What it guarantees (docs/mqtt.md has the gate-side view, docs/reliability.md the attacks):

* `accept()` journals first (durable, one transaction per batch); a decision is never
  handed to a wire before it is journaled, and accepting never waits on the network.
* A row leaves *pending* only when its wire acknowledges it: a decision -> delivered, a
  late report -> late. A refused acknowledgement leaves it pending and logged.
* `route()` sends a row still inside its deadline (less SEND_MARGIN_S) to the decision
  topic and everything else to the late topic, never to the gate.
* `drain()` re-sends from the journal only (in-time rows first, oldest first, then the
  late reports), within a window of unacknowledged messages, and never a row that is in
  flight or already acknowledged: at-least-once, with the same `seq` on a duplicate.
* Acknowledgements are written to the journal in batches by a marker thread; while the
  journal cannot record them (disk full) they are held, never re-sent, and reported as
  the `journal_unwritable` fault.

A transport (edge.delivery.mqtt today; OPC UA next) owns the connection and hands this
outbox the token of each message it wrote (`sent`) and of each acknowledgement (`acked`).
The outbox's lock is never held while calling the transport.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.delivery.contract import dumps, normalize_decision, parse_ts
from edge.delivery.journal import Journal, JournalError, Row
from edge.timestamps import iso

log = logging.getLogger(__name__)

_LOG_EVERY_S = 10.0  # a repeated warning: the first at once, then one line per this with the count held back
_PAGE = 200
LATE_LOG_EVERY_S = 5.0
SEND_MARGIN_S = 0.05  # a decision this close to its deadline goes to /decision/late: it would arrive after it


class Counters:
    """Exact event counters (status `mqtt`, metrics) and a rate limit for the log lines about them."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._log_gate: dict[str, tuple[float, int]] = {}  # key -> (last logged, held back since)

    def count(self, key: str, n: int = 1) -> int:
        """Add n to a counter; returns its new value."""
        with self._lock:
            self._counts[key] += n
            return self._counts[key]

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def log_limited(self, logger: logging.Logger, key: str, level: int, msg: str, extra: Mapping[str, Any]) -> None:
        """Log the first occurrence of `key` at once, then at most one line per _LOG_EVERY_S
        with the number held back (`suppressed`): a stream of bad triggers or a takeover fight
        must not flood the log. The counters stay exact."""
        now = time.monotonic()
        with self._lock:
            last, held = self._log_gate.get(key, (-math.inf, 0))
            if now - last < _LOG_EVERY_S:
                self._log_gate[key] = (last, held + 1)
                return
            self._log_gate[key] = (now, 0)
        logger.log(level, msg, extra={**extra, "suppressed": held})


@dataclass(frozen=True)
class Outgoing:
    """One journaled row as it goes on the wire now: `kind` "decision" (to the gate, with
    `seconds_left` before its deadline) or "late" (the audit topic, with when it was reported)."""

    kind: str
    payload: str
    seconds_left: float | None


class Outbox:
    """Journal-backed delivery state: what is pending, in flight, acknowledged, and what to send next."""

    def __init__(self, journal: Journal, decision_deadline_s: float, max_inflight: int,
                 counters: Counters | None = None, retry_s: float = 5.0) -> None:
        self.journal = journal
        self.retry_s = retry_s  # a journal that cannot record acknowledgements is retried this often
        self.decision_deadline_s = decision_deadline_s
        self.max_inflight = max_inflight
        self.counters = counters or Counters()
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)  # an acknowledgement, a reset, or a stop
        self._tokens: dict[int, tuple[str, int | None]] = {}  # every unacknowledged message, status too
        self._inflight: dict[int, int] = {}  # seq -> token, decision and late messages only
        self._early: dict[int, str | None] = {}  # acknowledgements that beat their token's registration
        # Acknowledged by the wire, not yet marked in the journal (the marker thread batches
        # them; on a full disk they wait here): never re-sent. Guarded by _lock.
        self._unmarked: dict[int, str] = {}
        self._mark_evt = threading.Event()
        self._mark_failed = False
        self._marker: threading.Thread | None = None
        self._marker_stop = threading.Event()
        self.started_wall = time.time()
        self._late_logged = -LATE_LOG_EVERY_S
        self._late_since_log = 0

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.started_wall = time.time()
        self._marker_stop.clear()
        self._marker = threading.Thread(target=self._mark_loop, name="journal-marker", daemon=True)
        self._marker.start()

    def stop(self) -> None:
        """Record the last acknowledgements and end the marker thread; pending rows stay journaled."""
        self._marker_stop.set()
        self._mark_evt.set()
        if self._marker is not None:
            self._marker.join(timeout=10)

    # -- accepting -------------------------------------------------------------------------
    def accept(self, items: list[tuple[Mapping[str, Any], float | None]]) -> list[Row]:
        """Normalise and journal decisions in one transaction (one fsync): an overloaded daemon
        answers its backlog of triggers so, within their deadlines. A deadline of None is
        frame_ts (or ts) + decision_deadline_s. Raises ContractError or JournalError, loudly."""
        now = time.time()
        batch = []
        for decision, deadline_ts in items:
            payload = normalize_decision(decision, now)
            if deadline_ts is None:
                base = parse_ts(payload["frame_ts"] or payload["ts"])
                deadline_ts = base + self.decision_deadline_s
            payload["deadline"] = iso(deadline_ts)
            batch.append((payload, deadline_ts))
        rows = self.journal.append_rows(batch)
        self.counters.count("decisions", len(rows))
        return rows

    # -- sending ---------------------------------------------------------------------------
    def route(self, row: Row) -> Outgoing:
        """Where a row goes if written now: its decision while in time, else a late report."""
        now = time.time()
        if now < row.deadline_ts - SEND_MARGIN_S:
            return Outgoing("decision", row.payload, row.deadline_ts - now)
        body = row.decision
        body.update(reported_ts=iso(now), late_by_s=round(now - row.deadline_ts, 3))
        return Outgoing("late", dumps(body), None)

    def sent(self, token: int, kind: str, row: Row | None) -> None:
        """The transport wrote a message (a row, or a status with row None) under `token`."""
        seq = row.seq if row is not None else None
        if row is not None:
            self.counters.count("sent_" + kind)
            if kind == "late":
                self._log_late(row)
        with self._lock:
            early = self._early.pop(token, None) if token in self._early else _NOT_YET
            if early is _NOT_YET:
                self._tokens[token] = (kind, seq)
                if seq is not None:
                    self._inflight[seq] = token
                return
        self._complete(token, kind, seq, early)

    def acked(self, token: int, refused: str | None = None) -> None:
        """The wire acknowledged `token` (`refused`: the receiver's reason when it refused it)."""
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                self._early[token] = refused
                while len(self._early) > 1000:  # acks nobody will claim must not pile up
                    del self._early[next(iter(self._early))]
                return
        self._complete(token, entry[0], entry[1], refused)

    def _complete(self, token: int, kind: str, seq: int | None, refused: str | None) -> None:
        """Mark the journal first (via the marker), then forget the token (the drain checks both)."""
        if refused is not None:
            self.counters.count("refused_by_broker")
            log.error("broker refused a publish; it stays pending and is retried",
                      extra={"kind": kind, "seq": seq, "reason": refused})
        elif seq is not None:
            with self._lock:
                self._unmarked[seq] = kind  # written to the journal by the marker, never re-sent
            self._mark_evt.set()
            self.counters.count("acked_" + kind)
        with self._lock:
            if self._tokens.get(token) == (kind, seq):
                del self._tokens[token]
            if seq is not None and self._inflight.get(seq) == token:
                del self._inflight[seq]
            self.changed.notify_all()

    def _log_late(self, row: Row) -> None:
        self._late_since_log += 1
        if time.monotonic() - self._late_logged >= LATE_LOG_EVERY_S:  # a backlog must not flood the log
            now = time.time()
            earlier = row.created_ts < self.started_wall  # summarised at start (edge.service): a record
            log.log(logging.INFO if earlier else logging.WARNING,
                    "decision missed its deadline; reported on the late topic, not to the gate",
                    extra={"seq": row.seq, "part_id": row.part_id, "late_by_s": round(now - row.deadline_ts, 3),
                           "count": self._late_since_log, "earlier_run": earlier})
            self._late_logged, self._late_since_log = time.monotonic(), 0

    def forget_in_flight(self) -> None:
        """The connection is new or gone, and with it every unacknowledged message: only the
        journal re-sends from here (the transport dropped its own queue)."""
        with self._lock:
            self._tokens.clear()
            self._inflight.clear()
            self._early.clear()
            self.changed.notify_all()

    def wake_waiters(self) -> None:
        with self._lock:
            self.changed.notify_all()

    # -- what is where -----------------------------------------------------------------------
    def in_flight(self) -> int:
        return len(self._inflight)

    def unacknowledged(self) -> int:
        """Messages written and not acknowledged, status ones too (they fill the transport's window)."""
        with self._lock:
            return len(self._tokens)

    def due(self, seq: int) -> bool:
        """To be sent now: not in flight, still pending in the journal, not already acknowledged."""
        with self._lock:
            if seq in self._inflight or seq in self._unmarked:
                return False
        return self.journal.is_pending(seq)

    def wait_window(self, usable: Callable[[], bool], timeout: float) -> bool:
        """Wait until fewer than max_inflight rows are in flight; False if `usable()` turns false."""
        with self._lock:
            self.changed.wait_for(lambda: len(self._inflight) < self.max_inflight or not usable(), timeout=timeout)
            return len(self._inflight) < self.max_inflight and usable()

    def wait_in_flight_done(self, give_up: Callable[[], bool], timeout: float) -> bool:
        """Wait until no row is in flight (stop's flush); False on timeout or once `give_up()`."""
        with self._lock:
            return self.changed.wait_for(lambda: not self._inflight or give_up(), timeout=timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until no journaled decision is pending (all delivered or reported late)."""
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                if self.journal.counts()["pending"] == 0:
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.25))

    def drain(self, send: Callable[[Row], bool | None], usable: Callable[[], bool], window_timeout: float) -> int:
        """Send pending rows not in flight: those still in time first, then the late reports.

        `send(row)` returns True once written, False when it was not (skipped or refused by the
        client), None when the link is gone (the pass ends). Returns the number sent."""
        sent = 0
        try:
            for in_time in (True, False):
                after = 0
                while rows := self.journal.undelivered(limit=_PAGE, after_seq=after):
                    for row in rows:
                        after = row.seq
                        if (time.time() < row.deadline_ts) != in_time:
                            continue
                        if not self.wait_window(usable, window_timeout):
                            return sent
                        done = send(row)
                        if done is None:
                            return sent
                        sent += done
            return sent
        finally:
            if sent:
                self.counters.count("resent", sent)
                log.info("re-sent journaled decisions", extra={"count": sent, **self.journal.counts()})

    # -- recording acknowledgements ------------------------------------------------------------
    def _mark_loop(self) -> None:
        """Record acknowledgements in the journal, many per transaction: one fsync per PUBACK on
        the network thread would cap delivery at the disk's fsync rate and stall that thread."""
        while not self._marker_stop.is_set():
            self._mark_evt.wait(0.5)
            self._mark_evt.clear()
            self._write_marks()
            if self._mark_failed:
                self._marker_stop.wait(self.retry_s)  # the disk is full: retry calmly
        self._write_marks()  # the acknowledgements of the final flush

    def _write_marks(self) -> None:
        """The wire has these messages. If the journal cannot say so (disk full, read-only file
        system), re-sending them would duplicate them now and turn them into an endless stream of
        late reports: they stay held here, are never re-sent, and the state is a delivery fault."""
        with self._lock:
            held = dict(self._unmarked)
        if not held:
            return
        try:
            self.journal.finish_many([(seq, "delivered" if kind == "decision" else "late")
                                      for seq, kind in held.items()])
        except JournalError as exc:
            if not self._mark_failed:
                self._mark_failed = True
                self.counters.count("journal_mark_failed")
                log.error("journal cannot record deliveries (disk full?): delivered decisions are not sent "
                          "again; retrying the journal write. Free space on the journal's disk",
                          extra={"rows": len(held), "error": str(exc), "fault": "journal_unwritable",
                                 "path": str(self.journal.path)})
            return
        with self._lock:
            for seq in held:
                if self._unmarked.get(seq) == held[seq]:
                    del self._unmarked[seq]
            self.changed.notify_all()  # flush() waits on the journal's pending count
        if self._mark_failed:
            self._mark_failed = False
            log.info("journal writable again: deliveries recorded", extra={"rows": len(held),
                                                                           "fault_cleared": "journal_unwritable"})

    def faults(self) -> list[str]:
        """Delivery faults of the outbox now in force (empty when healthy)."""
        return ["journal_unwritable"] if self._mark_failed else []


_NOT_YET: Any = object()  # sent(): no acknowledgement arrived before the token was registered
