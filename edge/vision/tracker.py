"""Follow parts across frames of a moving line and hand each one over exactly once.

A part is seen in many consecutive frames; it must be classified once, on the frame
that shows it best: fully in view and nearest the inspection line (where lighting and
optics are set up). The tracker is fed each frame's detections and returns the parts
that are ready. Pure and deterministic: no clock, no threads, no image copies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edge.vision.locate import PartBox

log = logging.getLogger(__name__)

VELOCITY_SMOOTHING = 0.4  # weight of the newest frame-to-frame displacement in the velocity
BACKWARD_TOLERANCE = 0.2  # radii a centre may seem to move against the belt (locator jitter)
SPEED_UNCERTAINTY = 0.1  # relative error of a predicted speed: the gate widens with frames skipped
STOPPED_GATE = 0.5  # radii from a lost track's last position within which a detection is still that part
# ...if it was seen at most this many frames before: over longer gaps a moving belt can bring the
# part behind it there (bench/tracker_gaps.py: long random stalls then gained errors).
STOPPED_MAX_GAP = 4


@dataclass(frozen=True)
class Track:
    """A part handed over for inspection: its best observation and its history."""

    track_id: int
    frame_index: int  # frame of the best observation: crop `box` from this frame
    box: PartBox
    payload: Any  # what the caller passed with that frame (e.g. the frame itself)
    first_frame: int
    last_frame: int
    hits: int  # frames in which the part was detected
    reason: str  # "predicted" / "nearest": at its closest to the line; "crossed": passed it; "exit";
    # "passed": handed over before a part behind it; "flush"; "unseen": it passed the line but
    # was never fully in view, so it cannot be inspected (box and payload: its crossing frame)


@dataclass
class _Live:
    track_id: int
    first_frame: int
    last_frame: int
    box: PartBox  # latest observation
    hits: int = 1
    velocity: tuple[float, float] = (0.0, 0.0)  # pixels per frame, smoothed over the hits
    steady: int = 0  # speed measurements between two full views (cut views bias the centre)
    crossed: bool = False
    emitted: bool = False
    best: tuple[float, int, PartBox, Any] | None = field(default=None)  # (|dx|, frame, box, payload)
    crossing: tuple[int, PartBox, Any] | None = None  # (frame, box, payload) where it crossed the line


class PartTracker:
    """Associates detections frame to frame and emits each part once.

    A part is emitted as soon as it is known to be at its nearest to the inspection line
    (inspection_x, a fraction of the frame width, crossed in `direction`): on the frame
    whose predicted successor is no closer, or at the latest on the frame where its
    centre has crossed the line, with the observation nearest the line among those
    where it was fully in view. If it was not
    fully in view when crossing, the first later fully-in-view observation is used; a
    part that leaves (or is lost) without that is emitted at exit if it was ever fully
    in view. A track survives `max_missing` frames without detection, and longer (up to
    `max_coast`) while its predicted position is still in view, so a part the detector
    misses for a while is picked up again by the same track instead of being emitted
    twice. Detections are matched to the nearest predicted centre (smoothed velocity, or
    `expected_speed` for a new track; the belt speed learned from earlier parts as a
    second guess) within `gate` radii, widened when frames were skipped; parts on the
    belt do not overlap, so centres of different parts are at least two radii apart, and
    never move against the belt. A track seen once is dropped when next looked for and
    not found. Parts handed over together come in belt order.

    A part followed past the line that is never fully in view (riding along the frame's
    top or bottom edge, larger than the frame) cannot be inspected, but a decision is
    still owed for it: it is handed over with reason "unseen" (the caller rejects it as a
    fault), when a part behind it is handed over or at the latest when its track closes.
    """

    def __init__(
        self,
        inspection_x: float = 0.5,
        *,
        frame_width: int | None = None,
        direction: int = 1,  # +1: parts move left to right, -1: right to left
        max_missing: int = 3,
        max_coast: int = 10,
        gate: float = 1.0,  # max association distance from the predicted centre, in radii
        expected_speed: float = 0.0,  # belt speed in px/frame, if known: first prediction
        min_hits: int = 2,  # detections needed before a track may be emitted
        max_lag: int = 2,  # frames a best observation may be older than a fresh fully-in-view one
        predictive: bool = False,  # the caller hands parts over through due(): no observed "nearest"
    ) -> None:
        if not 0.0 <= inspection_x <= 1.0:
            raise ValueError(f"inspection_x is a fraction of the frame width, got {inspection_x}")
        if direction not in (1, -1):
            raise ValueError("direction must be +1 or -1")
        self.inspection_x = inspection_x
        self.frame_width = frame_width
        self.direction = direction
        self.max_missing = max_missing
        self.max_coast = max(max_coast, max_missing)
        self.gate = gate
        self.expected_speed = expected_speed
        self.min_hits = min_hits
        self.max_lag = max_lag
        self.predictive = predictive
        self._live: list[_Live] = []
        self._next_id = 0
        self._last_frame: int | None = None
        self._belt_speed = 0.0  # px/frame along the belt, learned from parts followed steadily
        self._part_radius = 0.0  # of the latest part seen fully in view
        self.overruns = 0  # updates after a gap in which a part travels more than its diameter

    @property
    def active(self) -> int:
        """Tracks currently open, tentative ones included."""
        return len(self._live)

    @property
    def followed(self) -> int:
        """Tracks seen often enough to be handed over: parts actually being followed. Parts in
        view and none followed for long means the belt moves otherwise than configured."""
        return sum(tr.hits >= self.min_hits for tr in self._live)

    def update(
        self,
        frame_index: int,
        boxes: Sequence[PartBox],
        frame_width: int | None = None,
        payload: Any = None,
    ) -> list[Track]:
        """Feed one frame's detections; returns the parts ready for inspection, in order.

        `payload` (e.g. the frame) is kept only for each part's best observation and
        handed back with it, so the caller need not buffer frames to crop the part.
        """
        if frame_width is not None:
            self.frame_width = frame_width
        if self.frame_width is None:
            raise ValueError("frame_width unknown: pass it to PartTracker or update()")
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frame_index must increase ({frame_index} after {self._last_frame})")
        if self._last_frame is not None and (frame_index - self._last_frame) * self._belt_speed > 2 * self._part_radius > 0:
            # Beyond this a part can be taken for its neighbour or pass unseen (bench/tracker_gaps.py).
            self.overruns += 1
        self._last_frame = frame_index
        full = [b.radius for b in boxes if b.fully_in_view]
        if full:
            self._part_radius = max(full)
        line = self.inspection_x * self.frame_width
        ready: list[Track] = []
        matched = self._associate(frame_index, boxes)
        for tr, bi in matched:
            box = boxes[bi]
            gap = frame_index - tr.last_frame
            inst = ((box.cx - tr.box.cx) / gap, (box.cy - tr.box.cy) / gap)
            # Centres of parts cut by the frame edge are biased inwards: a speed measured
            # between two full views replaces one measured on cut views, and is not spoilt by them.
            clean = box.fully_in_view and tr.box.fully_in_view
            if tr.hits == 1 or (clean and not tr.steady):
                tr.velocity = inst
            elif clean or not tr.steady:  # the locator's centres jitter by a few px; the belt's speed does not
                a = VELOCITY_SMOOTHING
                tr.velocity = (a * inst[0] + (1 - a) * tr.velocity[0], a * inst[1] + (1 - a) * tr.velocity[1])
            tr.steady += clean
            tr.box, tr.last_frame, tr.hits = box, frame_index, tr.hits + 1
            self._observe(tr, frame_index, box, payload, line)
        taken = {bi for _, bi in matched}
        for bi, box in enumerate(boxes):
            if bi not in taken:
                v0 = (self.direction * self.expected_speed, 0.0)
                tr = _Live(self._next_id, frame_index, frame_index, box, velocity=v0)
                self._next_id += 1
                self._live.append(tr)
                self._observe(tr, frame_index, box, payload, line)
        handed: list[_Live] = []
        for tr in self._live:
            if not self._eligible(tr):
                continue
            if tr.crossed:
                ready.append(self._emit(tr, "crossed"))
                handed.append(tr)
            elif not self.predictive and self._nearest_now(tr, frame_index, line):
                ready.append(self._emit(tr, "nearest"))
                handed.append(tr)
        # A part further down the belt than one handed over now (lost for a while: frames
        # skipped, detector misses) goes first, so the gate gets parts in belt order.
        xs = [h.box.cx for h in handed]
        for tr in self._pending_ahead(xs, frame_index):
            ready.append(self._emit(tr, "passed"))
        for tr in self._unseen_ahead(xs, frame_index):
            ready.append(self._emit_unseen(tr))
        keep = []
        for tr in self._live:
            if tr.steady >= 2 and tr.velocity[0] * self.direction > 0 and tr.last_frame == frame_index:
                speed = abs(tr.velocity[0])
                self._belt_speed = speed if not self._belt_speed else 0.7 * self._belt_speed + 0.3 * speed
            if self._closed(tr, frame_index):
                if self._eligible(tr):
                    ready.append(self._emit(tr, "exit"))
                elif self._unseen(tr):
                    ready.append(self._emit_unseen(tr))
                log.debug("track closed", extra={"track": tr.track_id, "hits": tr.hits, "emitted": tr.emitted})
            else:
                keep.append(tr)
        self._live = keep
        ready.sort(key=lambda t: (t.frame_index, -t.box.cx * self.direction, t.track_id))  # belt order
        return ready

    def due(self, frame_index: int) -> list[Track]:
        """Parts that will be nearest the line in frame `frame_index`, by constant-velocity
        prediction from the frame just before: handed over at the predicted position
        before that frame is searched, so the decision does not wait for the search.

        Only a part seen within the last `max_lag` frames (and at least 3 times, for a
        steady velocity), moving along the belt and fully in view at the predicted
        position, qualifies; every other part goes the observed way through update(),
        which never hands over a part twice.
        """
        if self.frame_width is None:
            return []
        line = self.inspection_x * self.frame_width
        out = []
        for tr in self._live:
            gap = frame_index - tr.last_frame
            if tr.emitted or tr.hits < max(self.min_hits, 3) or not 1 <= gap <= self.max_lag:
                continue
            vx, vy = tr.velocity
            b = tr.box
            px, py = b.cx + vx * gap, b.cy + vy * gap
            if vx * self.direction <= 0 or not b.fully_in_view or px - b.radius < 0 or px + b.radius > self.frame_width - 1:
                continue
            # Due from the first frame predicted within 3/4 of a step of the line (or past it):
            # the nearest frame or the one before, so that the locator's jitter of a few px
            # never lets an observed crossing (one search later) come first.
            if self._pending_ahead([px], frame_index, exclude=tr) or self._unseen_ahead([px], frame_index):
                continue  # a part ahead of it is still owed (a verdict or a fault): both go the observed way, in order
            if (px - line) * self.direction >= -0.75 * abs(vx):
                tr.emitted = True  # its best view is kept: see release()
                box = PartBox(px, py, b.radius, b.score, True)
                log.debug("part due by prediction", extra={"track": tr.track_id, "frame": frame_index})
                out.append(Track(tr.track_id, frame_index, box, None, tr.first_frame, tr.last_frame, tr.hits,
                                 "predicted"))
        out.sort(key=lambda t: -t.box.cx * self.direction)  # belt order: a caller releasing one releases those behind
        return out

    def confirm(self, due: list[Track], locate: Callable[[Track], PartBox | None]) -> list[Track]:
        """The parts of `due` (in belt order) that `locate` finds in the frame, with the box found.

        The first one not found is released (see release()) with every part behind it, so
        that no part is decided before one ahead of it.
        """
        out = []
        for i, part in enumerate(due):
            box = locate(part)
            if box is None:
                for later in due[i:]:
                    self.release(later.track_id)
                break
            out.append(replace(part, box=box))
        return out

    def release(self, track_id: int) -> None:
        """Undo a predicted hand-over (due()) the caller could not confirm in the frame: the
        part was not where predicted (the belt stopped or jerked, the part was lifted). It then
        goes the observed way, from its next full view or, failing that, its best one so far."""
        for tr in self._live:
            if tr.track_id == track_id:
                tr.emitted = False
                log.debug("predicted hand-over released", extra={"track": track_id})

    def flush(self) -> list[Track]:
        """End of stream: emit every pending part that was ever fully in view (and, as
        "unseen", every one that passed the line without that)."""
        ready = [self._emit(tr, "flush") for tr in self._live if self._eligible(tr)]
        ready += [self._emit_unseen(tr) for tr in self._live if self._unseen(tr)]
        self._live = []
        ready.sort(key=lambda t: (t.frame_index, -t.box.cx * self.direction, t.track_id))  # belt order
        return ready

    def _ahead(self, xs: list[float], frame_index: int, owed: Callable[[_Live], bool],
               exclude: _Live | None = None) -> list[_Live]:
        """Tracks for which `owed` holds whose predicted centre is downstream of any of xs."""
        if not xs:
            return []
        behind = min(x * self.direction for x in xs)
        return [tr for tr in self._live if tr is not exclude and owed(tr)
                and (tr.box.cx + tr.velocity[0] * (frame_index - tr.last_frame)) * self.direction > behind]

    def _pending_ahead(self, xs: list[float], frame_index: int, exclude: _Live | None = None) -> list[_Live]:
        """Eligible parts not yet handed over whose predicted centre is downstream of any of xs."""
        return self._ahead(xs, frame_index, self._eligible, exclude)

    def _unseen(self, tr: _Live) -> bool:
        """Followed past the line, never fully in view, not handed over: owed a fault. Three
        sightings, not two, so a belt feature seen twice at the frame edge is not a part."""
        return not tr.emitted and tr.best is None and tr.crossing is not None and tr.hits >= max(self.min_hits, 3)

    def _unseen_ahead(self, xs: list[float], frame_index: int) -> list[_Live]:
        """Unseen parts downstream of a part handed over now: one cut by the frame's top or
        bottom edge never comes fully into view, and its fault must not follow the part behind."""
        return self._ahead(xs, frame_index, self._unseen)

    def _emit_unseen(self, tr: _Live) -> Track:
        assert tr.crossing is not None
        tr.emitted = True
        frame, box, payload = tr.crossing
        tr.crossing = None
        log.debug("part passed unseen", extra={"track": tr.track_id, "frame": frame})
        return Track(tr.track_id, frame, box, payload, tr.first_frame, tr.last_frame, tr.hits, "unseen")

    def _eligible(self, tr: _Live) -> bool:
        """Not yet emitted, seen often enough, and fully in view at least once."""
        return not tr.emitted and tr.best is not None and tr.hits >= self.min_hits

    def _nearest_now(self, tr: _Live, frame_index: int, line: float) -> bool:
        """This frame's observation is the nearest the line there will be: the part moves
        along the belt and its predicted next centre is no closer. Emitting now rather than
        on the crossing frame saves the gate one frame period of latency."""
        if tr.best is None or tr.best[1] != frame_index or tr.velocity[0] * self.direction <= 0:
            return False
        here = abs(tr.box.cx - line)
        return abs(tr.box.cx + tr.velocity[0] - line) >= here

    def _closed(self, tr: _Live, frame_index: int) -> bool:
        missing = frame_index - tr.last_frame
        if missing and tr.hits < self.min_hits:
            # A tentative track (one detection) is dropped the first time it is looked for and
            # not found: kept, its unknown speed would let it claim the next part upstream.
            return True
        if missing <= self.max_missing:
            return False
        if missing > self.max_coast:
            return True
        px = tr.box.cx + tr.velocity[0] * missing
        return px + tr.box.radius < 0 or px - tr.box.radius > (self.frame_width or 0) - 1  # left the view

    def _observe(self, tr: _Live, frame_index: int, box: PartBox, payload: Any, line: float) -> None:
        if not tr.crossed and (box.cx - line) * self.direction >= 0:
            tr.crossed = True
            if tr.best is None:  # kept only while the part has no full view to be judged on
                tr.crossing = (frame_index, box, payload)
        if tr.best is not None:
            tr.crossing = None
        if box.fully_in_view and not tr.emitted:
            dist = abs(box.cx - line)
            # Past the line the part only moves away: the nearest so far stays the best,
            # unless it is more than max_lag frames old (the detector missed the part near
            # the line): then the fresh view wins, so the gate does not wait on an old frame.
            stale = tr.best is not None and frame_index - tr.best[1] > self.max_lag
            if tr.best is None or dist < tr.best[0] or stale:
                tr.best = (dist, frame_index, box, payload)

    def _associate(self, frame_index: int, boxes: Sequence[PartBox]) -> list[tuple[_Live, int]]:
        """Greedy nearest-centre matching against each track's predicted position:
        (track, index into boxes) pairs, closest first."""
        pairs = []
        for ti, tr in enumerate(self._live):
            gap = frame_index - tr.last_frame
            # Parts ride the belt: sideways motion is locator jitter, not to be extrapolated far.
            # (x, y, speed): sideways motion is locator jitter, not extrapolated far.
            predicted = [(tr.box.cx + tr.velocity[0] * gap, tr.box.cy + tr.velocity[1] * min(gap, self.max_lag),
                          abs(tr.velocity[0]))]
            if self._belt_speed:
                # A part seen once may be at rest or moving; a part's own speed, measured on a
                # few frames, drifts over a long gap: the belt's speed is the second guess.
                predicted.append((tr.box.cx + self.direction * self._belt_speed * gap, tr.box.cy, self._belt_speed))
            for bi, box in enumerate(boxes):
                if (box.cx - tr.box.cx) * self.direction < -BACKWARD_TOLERANCE * tr.box.radius:
                    continue  # parts never move against the belt: that is another part
                radius = self.gate * max(tr.box.radius, box.radius)
                # The further a prediction reaches (frames skipped), the less exact it is.
                d = min(math.hypot(box.cx - px, box.cy - py) - SPEED_UNCERTAINTY * v * (gap - 1)
                        for px, py, v in predicted)
                if d <= radius:
                    pairs.append((d, ti, bi))
        pairs.sort()
        used_t: set[int] = set()
        used_b: set[int] = set()
        out = []
        for _, ti, bi in pairs:
            if ti in used_t or bi in used_b:
                continue
            used_t.add(ti)
            used_b.add(bi)
            out.append((self._live[ti], bi))
        # Second chance, for parts the predictions lost: a belt that stopped (or jerked back)
        # leaves a part where it was while its track predicts it further on. A detection still
        # unmatched within STOPPED_GATE radii of an unmatched, followed track's last position is
        # that part (parts never overlap): without this it became a new track, decided again.
        late = sorted((math.hypot(box.cx - tr.box.cx, box.cy - tr.box.cy), ti, bi)
                      for ti, tr in enumerate(self._live) if ti not in used_t and tr.hits >= self.min_hits
                      and frame_index - tr.last_frame <= STOPPED_MAX_GAP
                      and tr.velocity[0] * self.direction > 0  # a part that was moving along the belt
                      for bi, box in enumerate(boxes) if bi not in used_b)
        for d, ti, bi in late:
            tr = self._live[ti]
            if ti in used_t or bi in used_b or d > STOPPED_GATE * max(tr.box.radius, boxes[bi].radius):
                continue
            used_t.add(ti)
            used_b.add(bi)
            out.append((tr, bi))
        return out

    def _emit(self, tr: _Live, reason: str) -> Track:
        assert tr.best is not None
        tr.emitted = True
        _, frame, box, payload = tr.best
        tr.best = None  # drop the payload reference early
        log.debug("part ready", extra={"track": tr.track_id, "frame": frame, "reason": reason})
        return Track(tr.track_id, frame, box, payload, tr.first_frame, tr.last_frame, tr.hits, reason)
