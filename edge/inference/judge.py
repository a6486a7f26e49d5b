"""One crop to one verdict, the same way in the daemon, replay and the trainer's evaluation.

The rim is found once per crop and shared by the part-only mask (edge.vision.partview) and the
guard (edge.inference.guard). An `accept` is only ever the model's verdict on a part the guard let
through, at the bundle's threshold; anything the guard flags is a reject with its fault,
and its p_defect is still recorded as evidence.

A second look (`second_look`): where the guard finds the part `unfamiliar` at the rim the bundle's
finder gave, the other circles the crop's rim searches find are tried in turn (on a belt lighter
than the part the finder can take an inner ring or the belt's edge for the rim). The first at
which the guard passes the part whole, with its occlusion limits halved (SECOND_LOOK_OCCLUSION),
is the rim: mask, guard and verdict all use it. Nothing else changes: a part the guard passes at
the first rim, or calls `occluded`, is judged as before, and the model only ever judges a part
the guard vouched for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edge.inference.bundle import Bundle, BundleError
from edge.inference.guard import Features, Guard, GuardLimits
from edge.inference.model import Classifier, decide
from edge.vision.partview import Circle, other_rims

SECOND_LOOK = False  # the default until measured (docs/training.md, "Rule for the guard's second look")
# At another circle a part must pass the guard with its occlusion limits scaled by this: a covered
# part whose cover misled the finder could otherwise just pass there (docs/training.md, "strict").
SECOND_LOOK_OCCLUSION = 0.5


@dataclass(frozen=True)
class Judgement:
    p_defect: float
    decision: str  # accept | reject
    reason: str  # "model" or "fault:<what>"
    features: Features | None = None

    @property
    def fault(self) -> str | None:
        return self.reason[len("fault:"):] if self.reason.startswith("fault:") else None


class Judge:
    """A bundle's classifier and guard at one threshold."""

    def __init__(self, classifier: Classifier, threshold: float, guard: Guard | None = None,
                 second_look: bool = SECOND_LOOK) -> None:
        self.classifier = classifier
        self.threshold = threshold
        self.guard = guard
        self.second_look = second_look
        self._strict = None if guard is None else Guard(replace(
            guard.limits, max_off_angles=guard.limits.max_off_angles * SECOND_LOOK_OCCLUSION,
            max_longest_run=guard.limits.max_longest_run * SECOND_LOOK_OCCLUSION))

    @classmethod
    def from_bundle(cls, bundle: Bundle, threshold: float | None = None, num_threads: int = 1) -> Judge:
        clf = Classifier.from_bundle(bundle, num_threads=num_threads)
        try:
            limits = GuardLimits.from_meta(bundle.meta)
        except ValueError as exc:
            raise BundleError(f"{bundle.path / 'model.json'}: {exc}") from exc
        return cls(clf, bundle.threshold if threshold is None else threshold,
                   Guard(limits) if limits is not None else None)

    @property
    def needs_rim(self) -> bool:
        return self.guard is not None or self.classifier.spec.part_only

    def rim(self, crop: np.ndarray) -> Circle:
        """The crop's rim, found as the bundle's model was trained to see it."""
        return self.classifier.spec.rim(crop)

    def judge(self, crop: np.ndarray, circle: Circle | None = None) -> Judgement:
        """The verdict on one uint8 crop (`circle`: its rim, where already found)."""
        if circle is None and self.needs_rim:
            circle = self.rim(crop)
        p = self.classifier.p_defect(crop, circle)
        if self.guard is not None and circle is not None:
            fault, feats = self.guard.check(crop, circle)
            if fault == "unfamiliar" and self.second_look:
                for other in other_rims(crop, circle):
                    again, other_feats = self._strict.check(crop, other)
                    if again is None:
                        p = self.classifier.p_defect(crop, other)
                        return Judgement(p, decide(p, self.threshold), "model", other_feats)
            if fault is not None:
                return Judgement(p, "reject", f"fault:{fault}", feats)
            return Judgement(p, decide(p, self.threshold), "model", feats)
        return Judgement(p, decide(p, self.threshold), "model")

    def judge_all(self, crops: np.ndarray, circles: list[Circle] | None = None) -> list[Judgement]:
        if circles is None:
            return [self.judge(c) for c in crops]
        return [self.judge(c, r) for c, r in zip(crops, circles, strict=True)]


def reject_scores(judgements: list[Judgement]) -> np.ndarray:
    """Scores whose `>= threshold` is each verdict: p_defect, or 1.0 for a fault (always a reject).

    So confusion matrices and costs count what was decided, faults included.
    """
    return np.array([1.0 if j.fault else j.p_defect for j in judgements], np.float64)
