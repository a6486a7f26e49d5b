"""The inspection daemon: camera -> part -> int8 model -> decision -> journal -> MQTT.

The core loop is independent of where frames and triggers come from, so tests drive it
with video files and a real broker, and the demo with a simulated line.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from edge.config import Config, InspectSection
from edge.inference.inspector import Inspector
from edge.inference.recipes import Recipe, RecipeBook
from edge.inference.shadow import Shadow
from edge.ops.audit import AuditTrail
from edge.ops.drift import DriftWatch
from edge.ops.telemetry import Telemetry
from edge.vision.camera import Camera, FaultWatch
from edge.vision.locate import (
    PartBox,
    crop_part,
    crop_roi,
    find_parts,
    framed_part,
    part_near,
)
from edge.vision.sources import Frame
from edge.vision.tracker import PartTracker, Track

log = logging.getLogger(__name__)

VERSION = "0.1.0"
WARN_EVERY_S = 60.0  # a tracking warning repeats at most this often (the overrun metric counts each)
# Inspected frames in a row with parts in view and none followed before the daemon says so:
# a part is followed from its second sighting, so on a belt that moves as configured this
# never exceeds a few frames.
UNFOLLOWED_WARN_FRAMES = 25
OVERLOAD_LOG_EVERY_S = 5.0
TRIGGER_BATCH_MAX = 500  # triggers answered without inspection in one journal transaction
TRIGGER_QUEUE_MAX = 100_000  # triggers waiting for inspection; beyond, answered at once from the MQTT thread
TRIGGER_WAIT_SLICE_S = 0.25  # the wait for a frame after a trigger pings the watchdog at least this often
# What a camera fault means for the line, said in the WARNING that starts it (FaultWatch).
CAMERA_FAULT_CONSEQUENCE = {
    "continuous": "parts passing meanwhile are not inspected and get no decision (a gate that knows its parts "
                  "rejects them on timeout)",
    "trigger": "triggered parts without a usable frame are answered with fail-safe rejects naming the fault",
}


class TriggerItem(NamedTuple):
    """A trigger taken in, waiting for its inspection."""

    part_id: str
    received_mono: float
    sent_ts: float | None
    recipe: str | None  # the recipe it is judged under


def tracker_for(inspect: InspectSection) -> PartTracker:
    """The continuous-mode tracker as configured: a known belt speed is its first prediction."""
    return PartTracker(inspection_x=inspect.inspection_line, predictive=inspect.predictive_crop,
                       direction=1 if inspect.belt_direction == "left_to_right" else -1,
                       expected_speed=inspect.belt_speed_px_per_frame)


class DecisionSink(Protocol):
    def publish_decision(self, decision: dict[str, Any], deadline_ts: float | None = None) -> int: ...


@dataclass
class Counters:
    parts: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: {"accept": 0, "reject": 0})
    reasons: dict[str, int] = field(default_factory=dict)
    triggers: int = 0
    duplicate_triggers: int = 0
    faults: int = 0
    frames: int = 0  # frames inspected (continuous mode)
    frame_age_max_ms: float = 0.0  # oldest frame at the moment it was picked up: the latest-frame guarantee

    def count(self, d: dict[str, Any]) -> None:
        self.parts += 1
        self.decisions[d["decision"]] = self.decisions.get(d["decision"], 0) + 1
        self.reasons[d["reason"]] = self.reasons.get(d["reason"], 0) + 1
        if d["reason"].startswith("fault:"):
            self.faults += 1


class Daemon:
    def __init__(self, cfg: Config, camera: Camera, sink: DecisionSink, inspector: Inspector,
                 on_decision: Callable[[dict[str, Any]], None] | None = None,
                 audit: AuditTrail | None = None, collect: AuditTrail | None = None,
                 recipes: RecipeBook | None = None, recipe: str | None = None) -> None:
        self.cfg = cfg
        self.audit = audit
        self.collect = collect  # crops for labelling (commissioning): every judged part, or a sample
        self.shadow: Shadow | None = None  # a candidate judging every crop after it was decided (service sets it)
        self.telemetry: Telemetry | None = None
        self.drift: DriftWatch | None = None
        self.camera = camera
        self.sink = sink
        self.on_decision = on_decision
        self.counters = Counters()
        self.started = time.monotonic()
        # Recipes (edge.inference.recipes): the one in force judges continuous-mode parts; a trigger
        # keeps the recipe in force when it was taken in. Without recipes the book holds `inspector`.
        self.recipes = recipes if recipes is not None else RecipeBook.single(
            inspector, cfg.inspect.locate_config(), cfg.inspect.roi)
        self.recipe: Recipe = self.recipes[recipe if recipe in self.recipes else next(iter(self.recipes)).name]
        self.inspector = self.recipe.inspector
        self._locate = self.recipe.locate
        self._requested = self.recipe.name  # the recipe a trigger taken in now is judged under
        self._recipe_requests: deque[tuple[str, str, str | None]] = deque()  # (name, source, request id)
        self.recipe_switches = 0
        # Journals a switch before it takes effect; returns the journaled record's fields.
        self.record_switch: Callable[[str, str | None, str, str, str | None], dict[str, Any]] | None = None
        self.on_recipe: Callable[[Recipe, dict[str, Any]], None] | None = None  # after a switch took effect
        self._tracker: PartTracker | None = None
        self._overrun_logged = -WARN_EVERY_S
        self._unfollowed_frames = 0  # inspected frames in a row with parts in view, none followed
        self._unfollowed_logged = -WARN_EVERY_S
        self._off_line_logged = -WARN_EVERY_S  # a trigger found whole parts, none on the inspection line
        # Entries are small: the bound is only a last resort, so that the MQTT thread (which must
        # never wait on the disk) almost never has to answer a trigger itself. See _serve_triggers.
        self._triggers: queue.Queue[TriggerItem] = queue.Queue(maxsize=TRIGGER_QUEUE_MAX)
        self._handle_s = 0.0  # moving average of one trigger's inspection time: the overload estimate
        self._backlog: deque[TriggerItem] = deque()  # taken in, still to inspect
        self._unexamined: dict[str, int] = {}  # answered without inspection, since the last log line
        self._unexamined_logged: dict[str, float] = {}
        self._seen_parts: OrderedDict[str, None] = OrderedDict()
        self._trigger_lock = threading.Lock()
        self._serial = 0
        self._run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()  # set by SIGHUP; carried out between two frames
        self.reloader: Callable[[], None] | None = None
        self.on_tick: Callable[[], None] | None = None  # every loop pass: the systemd watchdog
        self.last_frame_index = 0
        self.camera_watch = FaultWatch(camera, CAMERA_FAULT_CONSEQUENCE[cfg.inspect.mode])
        self.triggers_ignored_continuous = 0  # triggers received while inspect.mode is continuous
        self._continuous_trigger_logged = -WARN_EVERY_S

    # -- trigger mode --------------------------------------------------------------
    def trigger(self, part_id: str, received_mono: float | None = None, sent_ts: float | None = None,
                recipe: str | None = None) -> bool:
        """Queue a trigger (called from the MQTT or OPC UA thread); False if part_id was already answered.

        A trigger that carries its sender's time and arrives older than
        inspect.max_trigger_age_s (a stalled network, a queued backlog) is answered with a
        fail-safe reject: the part it announced has long left the camera's view.
        The part is judged under `recipe` when the trigger names one (a name that is not
        configured gets reject fault:unknown_recipe), else under the recipe selected when
        the trigger was taken in, whatever is selected after it.
        """
        if self.cfg.inspect.mode != "trigger":
            self._ignore_trigger_in_continuous(part_id)
            return False
        with self._trigger_lock:  # MQTT's thread and OPC UA's both call this: one answer per part id
            repeated = part_id in self._seen_parts
            if not repeated:
                self._seen_parts[part_id] = None
                while len(self._seen_parts) > 10_000:
                    self._seen_parts.popitem(last=False)
                announced = recipe if recipe is not None else self._requested
        if repeated:
            self.counters.duplicate_triggers += 1
            log.warning("duplicate trigger ignored", extra={"part_id": part_id})
            return False
        self.counters.triggers += 1
        try:
            self._triggers.put_nowait(TriggerItem(part_id, received_mono or time.monotonic(), sent_ts, announced))
        except queue.Full:
            # Never silent: an answer is owed for every part the gate announced.
            self._emit(self.inspector.fault(part_id, "overloaded", None, None))
        return True

    # -- recipes ---------------------------------------------------------------------
    def select_recipe(self, name: str, source: str, request_id: str | None = None) -> str | None:
        """Ask for a recipe switch (any thread): None when taken, else why it is refused.

        Taken means: every trigger taken in from now on is judged under `name`; the switch
        itself is journaled and takes effect in the inspection loop, between two parts,
        after the parts announced before it (edge.inference.recipes, docs/plc.md).
        """
        if not self.recipes.configured:
            return "no recipes are configured (recipes.products is empty)"
        if name not in self.recipes.names:
            return f"unknown recipe {name[:64]!r}; configured: {', '.join(self.recipes.names)}"
        with self._trigger_lock:
            self._requested = name
            self._recipe_requests.append((name, source, request_id))
        return None

    def _apply_recipe_requests(self) -> None:
        """Switch to the recipes asked for, in order, in the inspection thread (between two parts):
        each is journaled before any part is judged under it."""
        while self._recipe_requests:
            with self._trigger_lock:
                name, source, request_id = self._recipe_requests.popleft()
            if name == self.recipe.name:
                continue
            self._switch_to(self.recipes[name], source, request_id)

    def _switch_to(self, new: Recipe, source: str, request_id: str | None) -> None:
        old = self.recipe
        event: dict[str, Any] = {"recipe": new.name, "previous": old.name, "source": source,
                                 "request_id": request_id, "model": new.model_id}
        if self.record_switch is not None:
            event.update(self.record_switch(str(new.name), old.name, source, new.model_id, request_id))
        self.recipe, self.inspector, self._locate = new, new.inspector, new.locate
        self.recipe_switches += 1
        if self.drift is not None:  # another product: the drift baseline is the new bundle's
            self.drift.model_changed(new.inspector.bundle.meta.get("image_stats"))
        log.info("recipe switched", extra={k: v for k, v in event.items() if v is not None})
        if self.on_recipe is not None:
            self.on_recipe(new, event)

    def replace_recipes(self, book: RecipeBook) -> None:
        """A reloaded book (SIGHUP), in the inspection thread: the recipe in force is kept by name."""
        current = book.get(self.recipe.name) or book[next(iter(book)).name]
        with self._trigger_lock:
            self.recipes = book
            if self._requested not in book:
                self._requested = current.name
        self.recipe, self.inspector, self._locate = current, current.inspector, current.locate

    def _ignore_trigger_in_continuous(self, part_id: str) -> None:
        """A trigger while inspect.mode is continuous: not answered (the daemon decides the parts it
        tracks itself), but said, so that a gate sending triggers learns why it only sees timeouts.
        The first is logged at once, then at most one line per WARN_EVERY_S with the count."""
        self.triggers_ignored_continuous += 1
        now = time.monotonic()
        if now - self._continuous_trigger_logged >= WARN_EVERY_S:
            self._continuous_trigger_logged = now
            log.info("ignoring triggers: inspect.mode is continuous (each part is decided as it passes, under "
                     "the daemon's own part_id); set inspect.mode: trigger to answer them",
                     extra={"part_id": part_id, "ignored": self.triggers_ignored_continuous})

    def _due(self, t_mono: float, sent_ts: float | None) -> float:
        """The gate's clock for a part started when its trigger was sent (or, at the latest, received),
        not when the frame after it was captured: so does the decision's deadline (epoch s)."""
        received = time.time() - (time.monotonic() - t_mono)
        return (min(sent_ts, received) if sent_ts is not None else received) + self.cfg.mqtt.decision_deadline_s

    def _cannot_inspect(self, sent_ts: float | None, due: float, ahead: int = 0) -> str | None:
        """Why a trigger is answered without inspecting it, or None; `ahead`: triggers to be
        inspected before it."""
        # A ts in the future is no evidence of freshness either (a gate clock running ahead, a
        # local time sent as UTC): beyond the same tolerance it is answered like a stale one.
        if sent_ts is not None and abs(time.time() - sent_ts) > self.cfg.inspect.max_trigger_age_s:
            return "stale_trigger"
        if time.time() + (ahead + 1) * self._handle_s > due:
            # Overload: by the time its turn comes it would be past its deadline (the gate would
            # reject the part for lack of an answer anyway). An explicit reject now, while the
            # gate still waits, keeps the backlog to what can be inspected in time.
            return "overloaded"
        return None

    def _serve_triggers(self) -> None:
        """Take in every queued trigger; answer at once those that cannot be inspected before
        their deadline (counting the ones ahead of them), then inspect the first that can.
        The answered ones share one journal transaction (one fsync), so a burst is answered
        within its deadlines instead of making every later part late too."""
        backlog = self._backlog
        while len(backlog) < TRIGGER_BATCH_MAX:
            try:
                backlog.append(self._triggers.get_nowait())
            except queue.Empty:
                break
        # A switch asked for before any of these triggers is journaled before they are answered.
        if self._recipe_requests:
            self._apply_recipe_requests()
        batch: list[tuple[dict[str, Any], float]] = []
        kept: deque[TriggerItem] = deque()
        for item in backlog:
            due = self._due(item.received_mono, item.sent_ts)
            recipe = self.recipes.get(item.recipe)
            why = "unknown_recipe" if recipe is None else self._cannot_inspect(item.sent_ts, due, ahead=len(kept))
            if why is None:
                kept.append(item)
                continue
            decision = (recipe or self.recipe).inspector.fault(item.part_id, why, None, None)
            if recipe is None:
                decision["recipe"] = item.recipe  # what the trigger asked for, as evidence
            batch.append((decision, due))
            self._note_unexamined(why, item.part_id, item.sent_ts, item.recipe)
        self._backlog = kept
        if batch:
            self._emit_batch(batch)
        if not kept:
            return
        first = kept.popleft()
        t0 = time.monotonic()
        try:
            self._inspect_trigger(first.part_id, first.received_mono, self._due(first.received_mono, first.sent_ts),
                                  self.recipes[first.recipe])
        finally:
            self._handle_s = 0.8 * self._handle_s + 0.2 * (time.monotonic() - t0)

    def _note_unexamined(self, why: str, part_id: str, sent_ts: float | None, recipe: str | None = None) -> None:
        """A log line per kind at most every few seconds, with how many: a burst must not flood the log."""
        self._unexamined[why] = self._unexamined.get(why, 0) + 1
        now = time.monotonic()
        if now - self._unexamined_logged.get(why, -OVERLOAD_LOG_EVERY_S) < OVERLOAD_LOG_EVERY_S:
            return
        n, self._unexamined[why] = self._unexamined[why], 0
        self._unexamined_logged[why] = now
        if why == "unknown_recipe":
            log.warning("trigger names a recipe that is not configured: rejecting", extra={
                "part_id": part_id, "recipe": str(recipe)[:64], "count": n, "configured": self.recipes.names})
        elif why == "stale_trigger":
            log.warning("stale trigger (or a sender clock far off): rejecting", extra={
                "part_id": part_id, "age_s": round(time.time() - (sent_ts or 0.0), 3), "count": n,
                "max_trigger_age_s": self.cfg.inspect.max_trigger_age_s})
        else:
            log.warning("overloaded: triggers arrive faster than parts can be inspected in time; answering "
                        "them with reject fault:overloaded", extra={
                            "part_id": part_id, "count": n, "queued": self._triggers.qsize(),
                            "inspect_ms": round(self._handle_s * 1000, 1),
                            "deadline_s": self.cfg.mqtt.decision_deadline_s})

    def _inspect_trigger(self, part_id: str, t_mono: float, due: float, recipe: Recipe) -> None:
        inspector = recipe.inspector
        wait = self.cfg.inspect.trigger_wait_s
        # The freshest frame captured after the trigger, not one from before it.
        deadline = t_mono + wait
        frame = None
        after = self.last_frame_index
        while time.monotonic() < deadline:
            if self.on_tick is not None:  # a long trigger_wait_s with no camera must not starve the watchdog
                self.on_tick()
            f = self.camera.next_frame(after, min(max(deadline - time.monotonic(), 0.001), TRIGGER_WAIT_SLICE_S))
            if f is None:
                if self.camera.ended or self.stop_event.is_set() or time.monotonic() >= deadline:
                    break
                continue
            after = f.index
            if f.mono >= t_mono:
                frame = f
                break
        if frame is None:
            why = self.camera.fault() or "no_frame"
            self._emit(inspector.fault(part_id, why if why != "no_frame" else "no_frame_after_trigger", None, None),
                       deadline_ts=due)
            return
        self.last_frame_index = frame.index
        if self.camera.fault() == "frozen_frame":
            self._emit(inspector.fault(part_id, "frozen_frame", frame.ts, frame.mono), deadline_ts=due)
            return
        found = self._crop_for_trigger(frame, recipe)
        if found is None:
            self._emit(inspector.fault(part_id, "no_part", frame.ts, frame.mono), deadline_ts=due)
            return
        crop, diameter = found
        self._emit(inspector.decide(part_id, crop, frame.ts, frame.mono), crop, diameter, deadline_ts=due)

    def _crop_for_trigger(self, frame: Frame, recipe: Recipe) -> tuple[np.ndarray, float | None] | None:
        """(crop, rim diameter in the frame) of the part the trigger announced; None if it
        is not there to be judged.

        The announced part is the one the inspection line crosses. Any other part in view
        (the previous one, still leaving) must never answer for it: were the announced part
        still entering, cut by the frame edge, its neighbour's verdict would be sent in its
        name. With a fixed ROI the crop must hold a whole part framed like the training
        images, or an empty or misloaded fixture would be judged as a part.
        """
        size = recipe.inspector.image_size
        if self.cfg.inspect.locate == "roi" and recipe.roi:
            crop = crop_roi(frame.gray, recipe.roi, size)
            if not framed_part(crop):
                return None
            return crop, None
        width = frame.gray.shape[1]
        line_x = self.cfg.inspect.inspection_line * width
        whole = [b for b in find_parts(frame.gray, recipe.locate) if b.fully_in_view]
        boxes = [b for b in whole if abs(b.cx - line_x) <= b.radius]
        if not boxes:
            if whole and time.monotonic() - self._off_line_logged > WARN_EVERY_S:
                self._off_line_logged = time.monotonic()
                log.warning("triggered with a whole part in view but none on the inspection line: answered "
                            "fault:no_part; if parts stand elsewhere when the trigger fires, set "
                            f"inspect.inspection_line (now {self.cfg.inspect.inspection_line:g}) to where they are",
                            extra={"part_x": [round(b.cx / width, 3) for b in whole]})
            return None
        best = min(boxes, key=lambda b: abs(b.cx - line_x))
        return crop_part(frame.gray, best, size), 2 * best.radius

    # -- continuous mode -------------------------------------------------------------
    def _continuous_step(self, frame: Frame) -> None:
        if self._tracker is None:
            self._tracker = tracker_for(self.cfg.inspect)
        if self.cfg.inspect.predictive_crop:
            # Parts due in this very frame are judged before the frame is searched: the gate gets
            # its answer a search (several ms) sooner. The prediction is only where to look: the
            # rim is found around it (about 1 ms) and the crop taken there, so a part that stopped
            # or jerked is judged where it is, never on a crop holding part of its neighbour.
            # One not found near its prediction is released with the parts behind it: the
            # search below finds it, or its best view is used, and none is decided before it.
            for part in self._tracker.confirm(self._tracker.due(frame.index),
                                              lambda t: self._whole_part_near(frame, t)):
                self._decide_track(part, frame)
        boxes = find_parts(frame.gray, self._locate)
        overruns = self._tracker.overruns
        # The tracker keeps the frame of each part's best view itself: however slow the belt,
        # the part is cropped from the frame it was judged best on.
        handed = self._tracker.update(frame.index, boxes, frame.gray.shape[1], payload=frame)
        if self._tracker.overruns > overruns and time.monotonic() - self._overrun_logged > WARN_EVERY_S:
            self._overrun_logged = time.monotonic()
            hint = "" if self.cfg.inspect.belt_speed_px_per_frame else (
                "; setting inspect.belt_speed_px_per_frame lets the tracker predict across such gaps")
            log.warning("inspection falls behind the belt: a part moved more than its diameter between two "
                        "inspected frames, so parts may pass unseen or be taken for their neighbour" + hint,
                        extra={"overruns": self._tracker.overruns, "frames_dropped": self.camera.dropped})
        self._watch_unfollowed(bool(boxes) and not handed and self._tracker.followed == 0)
        for done in handed:
            if done.reason == "unseen":
                self._reject_unseen(done)
            else:
                self._decide_track(done, done.payload)

    def _whole_part_near(self, frame: Frame, track: Track) -> PartBox | None:
        seen = part_near(frame.gray, track.box, self._locate)
        return seen if seen is not None and seen.fully_in_view else None

    def _watch_unfollowed(self, unfollowed: bool) -> None:
        """Say so when parts are in view but the tracker follows none of them: a belt that
        runs the other way than inspect.belt_direction, or a loop too slow to learn the belt
        speed, would otherwise make no decision at all, silently."""
        self._unfollowed_frames = self._unfollowed_frames + 1 if unfollowed else 0
        if (self._unfollowed_frames >= UNFOLLOWED_WARN_FRAMES
                and time.monotonic() - self._unfollowed_logged > WARN_EVERY_S):
            self._unfollowed_logged = time.monotonic()
            inspect = self.cfg.inspect
            log.warning(f"parts are in view but none is followed ({self._unfollowed_frames} inspected frames in a "
                        f"row), so none is decided: check inspect.belt_direction (now {inspect.belt_direction}) "
                        "and, if the box inspects few of the camera's frames, inspect.belt_speed_px_per_frame "
                        f"(now {inspect.belt_speed_px_per_frame:g})",
                        extra={"frames_dropped": self.camera.dropped})

    def _next_part_id(self) -> str:
        self._serial += 1
        return f"{self._run_id}-{self._serial:06d}"

    def _decide_track(self, track: Track, frame: Frame) -> None:
        part_id = self._next_part_id()
        crop = crop_part(frame.gray, track.box, self.inspector.image_size)
        self._emit(self.inspector.decide(part_id, crop, frame.ts, frame.mono), crop, 2 * track.box.radius)

    def _reject_unseen(self, track: Track) -> None:
        """A part that passed the line without ever being fully in view (cut by the frame's
        top or bottom edge, or larger than the view): never judged on half a part, never
        left unanswered either."""
        part_id = self._next_part_id()
        frame: Frame = track.payload
        log.warning("a part passed the inspection line without ever being fully in view: rejected",
                    extra={"part_id": part_id, "cy": round(track.box.cy), "radius": round(track.box.radius),
                           "frame_height": frame.gray.shape[0]})
        self._emit(self.inspector.fault(part_id, "not_in_full_view", frame.ts, frame.mono))

    # -- shared ----------------------------------------------------------------------
    def _emit(self, decision: dict[str, Any], crop: np.ndarray | None = None, diameter: float | None = None,
              deadline_ts: float | None = None) -> None:
        """Count, journal and publish one decision; deadline_ts (epoch s) defaults to frame_ts
        (or ts) + mqtt.decision_deadline_s, see Publisher.publish_decision."""
        self.counters.count(decision)
        seq = self.sink.publish_decision(decision, deadline_ts=deadline_ts)
        decision["seq"] = seq
        if self.audit is not None:
            self.audit.record(decision, crop)
        if self.collect is not None and crop is not None:
            self.collect.record(decision, crop)
        if self.shadow is not None and crop is not None and decision.get("recipe") == self.cfg.model.shadow_recipe:
            self.shadow.submit(decision, crop)  # after publishing: the candidate never changes it
        if self.drift is not None:
            self.drift.observe(crop, diameter, decision)
        if self.telemetry is not None:
            judged_by = (self.recipes.get(decision.get("recipe")) or self.recipe).inspector
            self.telemetry.observe(decision, judged_by.last_inference_s if decision["reason"] == "model" else None)
        log.debug("decision", extra={k: decision[k] for k in ("part_id", "decision", "p_defect", "reason")})
        if self.on_decision:
            self.on_decision(decision)

    def _emit_batch(self, items: list[tuple[dict[str, Any], float]]) -> None:
        """_emit for decisions without a crop (faults), journaled together where the sink can."""
        if not hasattr(self.sink, "publish_decisions"):
            for decision, due in items:
                self._emit(decision, deadline_ts=due)
            return
        for decision, _due in items:
            self.counters.count(decision)
        seqs = self.sink.publish_decisions(items)
        for (decision, _due), seq in zip(items, seqs, strict=True):
            decision["seq"] = seq
            if self.audit is not None:
                self.audit.record(decision, None)
            if self.telemetry is not None:
                self.telemetry.observe(decision, None)
            if self.on_decision:
                self.on_decision(decision)

    def run(self, duration_s: float | None = None) -> None:
        """Inspect until stop_event is set (or duration_s passes)."""
        end = None if duration_s is None else time.monotonic() + duration_s
        mode = self.cfg.inspect.mode
        log.info("inspecting", extra={"mode": mode, "model": self.inspector.model_id,
                                      **({"recipe": self.recipe.name} if self.recipe.name is not None else {})})
        while not self.stop_event.is_set() and (end is None or time.monotonic() < end):
            if self.on_tick is not None:
                self.on_tick()
            self.camera_watch.check()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                if self.reloader is not None:
                    self.reloader()
            if self._recipe_requests:
                # Between two parts: in continuous mode the next part decided is judged under it; in
                # trigger mode each trigger keeps the recipe it was taken in under.
                self._apply_recipe_requests()
            if mode == "trigger":
                if not self._backlog:
                    try:
                        self._backlog.append(self._triggers.get(timeout=0.1))
                    except queue.Empty:
                        continue
                self._serve_triggers()
                continue
            frame = self.camera.next_frame(self.last_frame_index, 0.2)
            if frame is None:
                if self.camera.ended:
                    log.info("camera source ended: stopping")
                    break
                continue
            self.last_frame_index = frame.index
            c = self.counters
            c.frames += 1
            c.frame_age_max_ms = max(c.frame_age_max_ms, (time.monotonic() - frame.mono) * 1000)
            self._continuous_step(frame)

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {
            "version": VERSION,
            "model": self.inspector.model_id,
            **({"recipe": self.recipe.name, "recipes": self.recipes.names, "recipe_switches": self.recipe_switches}
               if self.recipes.configured else {}),
            "threshold": (self.inspector.threshold_check.to_status() if self.inspector.threshold_check is not None
                          else {"value": self.inspector.threshold}),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "parts": c.parts,
            "accept": c.decisions.get("accept", 0),
            "reject": c.decisions.get("reject", 0),
            "faults": c.faults,
            "frames_inspected": c.frames,
            "tracking_overruns": self._tracker.overruns if self._tracker is not None else 0,
            "drift": self.drift.state() if self.drift is not None else {},
            "frame_age_max_ms": round(c.frame_age_max_ms, 2),
            "camera": {"connected": self.camera.connected, "fps": round(self.camera.fps(), 1),
                       "frames": self.camera.frames, "dropped": self.camera.dropped,
                       "reconnects": self.camera.reconnects, "bad_frames": self.camera.bad_frames,
                       "fault": self.camera.fault(), **self.camera_watch.status()},
            "triggers_ignored_continuous": self.triggers_ignored_continuous,
            "audit": self.audit.stats() if self.audit is not None else {},
            "collect": self.collect.stats() if self.collect is not None else {},
            "shadow": self.shadow.stats() if self.shadow is not None else {},
            "delivery_faults": self.sink.faults() if hasattr(self.sink, "faults") else [],
        }
