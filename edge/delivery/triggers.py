"""Trigger intake, whatever wire it came over: each part announced once, and every trigger
that cannot be answered (retained, malformed, oversized, repeated) dropped, counted by reason
and logged at a bounded rate. Its part then gets no decision and the gate rejects it on
timeout, so the operator must see why (status `mqtt`, metrics, the log)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from edge.delivery.contract import ContractError, Trigger, parse_trigger
from edge.delivery.outbox import Counters

log = logging.getLogger(__name__)


class TriggerIntake:
    def __init__(self, counters: Counters, max_bytes: int, dedup: int) -> None:
        self.counters = counters
        self.max_bytes = max_bytes
        self.dedup = dedup  # remember this many part_ids to answer each once
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()

    def take(self, payload: bytes, retained: bool, where: str) -> Trigger | None:
        """The trigger to answer, or None for one dropped (counted and logged here)."""
        size = len(payload)
        if retained:
            self._ignore("retained", "retained trigger ignored (a trigger is an event, not a state; "
                         "clear it with an empty retained publish, and have the sender publish "
                         "triggers without retain)", {"topic": where, "bytes": size})
            return None
        try:
            trig = parse_trigger(payload, time.time(), time.monotonic(), self.max_bytes)
        except ContractError as exc:
            why = "oversized" if size > self.max_bytes else "malformed"
            self._ignore(why, f"{why} trigger ignored; that part times out and is rejected", {
                "topic": where, "bytes": size, "error": str(exc), "head": repr(bytes(payload[:48]))})
            return None
        with self._lock:
            repeated = trig.part_id in self._seen
            if not repeated:
                self._seen[trig.part_id] = None
                while len(self._seen) > self.dedup:
                    self._seen.popitem(last=False)
        if repeated:
            self._ignore("repeated", "repeated trigger ignored (already answered; a part_id reused "
                         "for a new part gets no decision and is rejected)", {"part_id": trig.part_id})
            return None
        self.counters.count("triggers")
        return trig

    def _ignore(self, why: str, msg: str, extra: Mapping[str, Any]) -> None:
        """Counted by reason (`triggers_<why>_ignored`, all in `triggers_ignored`), logged rate-limited."""
        self.counters.count("triggers_ignored")
        n = self.counters.count(f"triggers_{why}_ignored")
        self.counters.log_limited(log, "trigger_" + why, logging.WARNING, msg, {**extra, "reason": why, "ignored": n})
