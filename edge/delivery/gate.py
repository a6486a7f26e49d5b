"""`edge-gate`: a reference sorting-gate subscriber that consumes the contract safely.

It shows the rules a gate programmer must follow (docs/mqtt.md): the gate is told
about each part itself (its own part sensor, or the trigger it sends), and it
REJECTS unless an `accept` decision for that part arrives before the deadline while
the daemon is online and the gate's own broker link is up. The first decision for a
part wins; duplicates (at-least-once delivery) are ignored and counted.

`Gate` is the pure logic with an injectable clock (tests drive it without a
broker); edge.delivery.gate_cli wires it to MQTT (`GateClient`) and is the console
entry point, which reads part ids from stdin (one per line, as a part sensor would
report them) and prints one line per actuation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edge.delivery.contract import (
    ContractError,
    Payload,
    check_part_id,
    dumps,
    parse_decision,
    parse_status,
)

log = logging.getLogger("edge.delivery.gate")


def _parse(parser: Callable[[Payload], dict[str, Any]], payload: Payload | Mapping[str, Any]) -> dict[str, Any]:
    """Parse a payload or (tests, embedders) a mapping; a mapping JSON cannot carry is a ContractError too."""
    if isinstance(payload, Mapping):
        try:
            payload = dumps(payload)
        except (TypeError, ValueError) as exc:
            raise ContractError(f"not a JSON payload: {exc}"[:120]) from None
    return parser(payload)


@dataclass(frozen=True)
class GateAction:
    """What the gate did with one part.

    reason: decision | timeout | offline | link_down | repeated_part_id.
    detail: for `decision`, the decision's own reason (`model`, `fault:no_part`, ...), which
    says why the daemon rejected; for `offline`, the daemon's status reason.
    """

    part_id: str
    action: Literal["accept", "reject"]
    reason: str
    at: float
    seq: int | None = None
    detail: str = ""


class Gate:
    """Fail-safe gate logic: every expected part gets exactly one action, reject by default.

    Thread-safe (MQTT thread and timer thread both call in). `actuate` is called
    outside the lock, once per part, in addition to the actions being returned.
    """

    def __init__(self, deadline_s: float, *, clock: Callable[[], float] = time.monotonic,
                 actuate: Callable[[GateAction], None] | None = None, remember: int = 10_000) -> None:
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        self.deadline_s = deadline_s
        self._clock = clock
        self._actuate = actuate
        self._remember = remember
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: OrderedDict[str, float] = OrderedDict()  # part_id -> deadline (gate clock)
        self._done: OrderedDict[str, GateAction] = OrderedDict()
        self._early: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._daemon_online = False  # unknown counts as offline: no status, no accept
        self._link_up = True  # a bare Gate has no link; GateClient reports its own
        self.counters: Counter[str] = Counter()

    @property
    def online(self) -> bool:
        return self._daemon_online and self._link_up

    @property
    def pending(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def wait_online(self, timeout: float) -> bool:
        """Block until the daemon is online and the link is up (start-up, tests)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.online, timeout)

    def now(self) -> float:
        """The gate's clock (monotonic by default; tests pass their own)."""
        return self._clock()

    def next_deadline(self) -> float | None:
        with self._lock:
            return min(self._pending.values(), default=None)

    # -- inputs -------------------------------------------------------------------------
    def expect(self, part_id: str) -> GateAction | None:
        """A part is on its way to the gate (sensor or trigger): start its deadline."""
        part_id = check_part_id(part_id)
        with self._lock:
            now = self._clock()
            if part_id in self._pending:
                self.counters["repeated_parts"] += 1
                log.warning("part announced twice while pending; keeping the first", extra={"part_id": part_id})
                return None
            self.counters["parts"] += 1
            if part_id in self._done:
                # A reused id cannot be told apart from a stale duplicate decision: reject it.
                self.counters["repeated_parts"] += 1
                act = self._act(part_id, "reject", "repeated_part_id", now)
            elif not self.online:
                act = self._act(part_id, "reject", "offline" if self._link_up else "link_down", now)
            else:
                early = self._early.pop(part_id, None)
                if early is not None and now < early[1] + self.deadline_s:  # same boundary as tick()
                    act = self._act(part_id, early[0]["decision"], "decision", now, early[0]["seq"],
                                    early[0]["reason"])
                else:
                    self._pending[part_id] = now + self.deadline_s
                    act = None
        return self._emit([act])[0] if act else None

    def on_decision(self, payload: Payload | Mapping[str, Any]) -> GateAction | None:
        """A message on {prefix}/decision. The first valid decision for a part wins.

        Returns the action it caused: the verdict, or the timeout reject of a part whose
        deadline passed before the decision came (the ticker may not have run yet).
        """
        try:
            d = _parse(parse_decision, payload)
        except ContractError as exc:
            self.counters["invalid_decisions"] += 1
            log.warning("invalid decision ignored (the part will time out and be rejected)",
                        extra={"error": str(exc)})
            return None
        pid = d["part_id"]
        with self._lock:
            now = self._clock()
            done = self._done.get(pid)
            if done is not None:
                key = "duplicates" if done.reason == "decision" else "late_decisions"
                self.counters[key] += 1
                log.info("decision for a part already handled; ignored",
                         extra={"part_id": pid, "seq": d["seq"], "kind": key, "was": done.reason})
                return None
            if not self.online:
                # Nothing pends while not online; kept, it could accept a part after a reconnect.
                self.counters["offline_decisions"] += 1
                log.info("decision while the daemon is not known online or the link is down; ignored",
                         extra={"part_id": pid, "seq": d["seq"]})
                return None
            deadline = self._pending.get(pid)
            if deadline is not None and deadline <= now:
                # Late: reject exactly as tick() would have; the decision counts as late, like one after tick().
                del self._pending[pid]
                act = self._act(pid, "reject", "timeout", now)
                self.counters["late_decisions"] += 1
                log.info("decision after the part's deadline; rejected on timeout",
                         extra={"part_id": pid, "seq": d["seq"], "late_by_s": round(now - deadline, 3)})
                return self._emit([act])[0]
            if deadline is None:
                if pid in self._early:
                    self.counters["duplicates"] += 1
                    return None
                self.counters["early_decisions"] += 1
                self._early[pid] = (d, now)
                while len(self._early) > self._remember:
                    self._early.popitem(last=False)
                return None
            del self._pending[pid]
            act = self._act(pid, d["decision"], "decision", now, d["seq"], d["reason"])
        return self._emit([act])[0]

    def on_status(self, payload: Payload | Mapping[str, Any]) -> list[GateAction]:
        """A message on {prefix}/status: `offline` (or garbage) rejects everything pending."""
        try:
            st = _parse(parse_status, payload)
            online = st["state"] == "online"
            why = st.get("reason", "")
        except ContractError as exc:
            online, why = False, f"invalid status: {exc}"
        with self._lock:
            was, self._daemon_online = self._daemon_online, online
            acts = [] if online else self._reject_all("offline", str(why))
            self._changed.notify_all()
        if was != online:
            log.log(logging.INFO if online else logging.WARNING, "daemon status changed",
                    extra={"online": online, "reason": why or "-"})
        return self._emit(acts)

    def link(self, up: bool) -> list[GateAction]:
        """The gate's own broker connection: while it is down nothing can be trusted."""
        with self._lock:
            self._link_up = up
            if not up:
                self._daemon_online = False  # learnt again from the retained status on reconnect
            acts = [] if up else self._reject_all("link_down", "")
            self._changed.notify_all()
        return self._emit(acts)

    def tick(self) -> list[GateAction]:
        """Reject every part whose deadline passed without a decision."""
        with self._lock:
            now = self._clock()
            acts = []
            for pid, deadline in list(self._pending.items()):
                if deadline <= now:
                    del self._pending[pid]
                    acts.append(self._act(pid, "reject", "timeout", now))
            while self._early and next(iter(self._early.values()))[1] + self.deadline_s <= now:
                self._early.popitem(last=False)
        return self._emit(acts)

    # -- helpers (hold the lock) ----------------------------------------------------------
    def _reject_all(self, reason: str, detail: str) -> list[GateAction]:
        """Not online any more: reject what pends, and forget early decisions heard before the loss."""
        now = self._clock()
        acts = [self._act(pid, "reject", reason, now, detail=detail) for pid in self._pending]
        self._pending.clear()
        if self._early:
            log.info("early decisions forgotten", extra={"count": len(self._early), "reason": reason})
            self._early.clear()
        return acts

    def _act(self, part_id: str, action: str, reason: str, now: float, seq: int | None = None,
             detail: str = "") -> GateAction:
        act = GateAction(part_id, "accept" if action == "accept" else "reject", reason, now, seq, detail)
        self._done[part_id] = act
        while len(self._done) > self._remember:
            self._done.popitem(last=False)
        self.counters[f"{act.action}_{reason}"] += 1
        return act

    def _emit(self, acts: Sequence[GateAction | None]) -> list[GateAction]:
        out = [a for a in acts if a is not None]
        for a in out:
            log.info("gate action", extra={"part_id": a.part_id, "action": a.action, "reason": a.reason,
                                           "detail": a.detail or "-", "seq": a.seq})
            if self._actuate is not None:
                try:
                    self._actuate(a)
                except Exception:
                    log.exception("actuator callback failed", extra={"part_id": a.part_id})
        return out
