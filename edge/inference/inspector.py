"""From a located part to a decision record: crop, classify, decide, fail safe.

Pure of any I/O but the model: the daemon, tests and benchmarks drive it with frames.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.inference.bundle import Bundle, BundleError
from edge.inference.judge import Judge
from edge.inference.model import Classifier
from edge.inference.override import ThresholdCheck, check
from edge.timestamps import iso

log = logging.getLogger(__name__)


@dataclass
class Inspector:
    """The bundle in use; swapped whole on reload so every decision names its model."""

    bundle: Bundle
    judge: Judge  # rim, guard, part-only mask, views, threshold: edge.inference.judge
    last_inference_s: float | None = None  # for the metrics; not part of the published decision
    threshold_check: ThresholdCheck | None = None  # an override beside the bundle's validation: edge.inference.override
    recipe: str | None = None  # the recipe this inspector judges (edge.inference.recipes); None without recipes

    @classmethod
    def load(cls, bundle: Bundle, threshold: float | None = None, threads: int = 1,
             accept_validation_escapes: int | None = None, key: str = "model.threshold",
             recipe: str | None = None) -> Inspector:
        """Raises ThresholdRefused (edge.inference.override) for an override that would accept validation defects."""
        checked = check(bundle.meta, threshold, accept_validation_escapes, key=key)
        return cls(bundle, Judge.from_bundle(bundle, threshold, num_threads=threads), threshold_check=checked,
                   recipe=recipe)

    @property
    def classifier(self) -> Classifier:
        return self.judge.classifier

    @property
    def threshold(self) -> float:
        return self.judge.threshold

    def self_check(self) -> None:
        """Refuse a model that loads but cannot answer: before it replaces a working one.

        A flat grey and a noise image must both give a finite p_defect in [0, 1].
        """
        h, w = self.image_size
        probes = {"grey": np.full((h, w), 128, np.uint8),
                  "noise": np.random.default_rng(0).integers(0, 256, (h, w), dtype=np.uint8)}
        for name, img in probes.items():
            try:
                p = self.classifier.p_defect(img)
            except Exception as exc:  # noqa: BLE001 - any failure means: do not switch
                raise BundleError(f"{self.bundle.path}: self-check on a {name} image failed: {exc!r}") from exc
            if not (np.isfinite(p) and 0.0 <= p <= 1.0):
                raise BundleError(f"{self.bundle.path}: self-check on a {name} image gave p_defect={p!r}")

    @property
    def model_id(self) -> str:
        return self.bundle.short_id

    @property
    def image_size(self) -> tuple[int, int]:
        return self.classifier.image_size

    def decide(self, part_id: str, crop: np.ndarray, frame_ts: float, frame_mono: float) -> dict[str, Any]:
        """Decision for one crop; a model error becomes a fail-safe reject, never silence."""
        try:
            t0 = time.perf_counter()
            j = self.judge.judge(crop)
            self.last_inference_s = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - any model failure must still answer the gate
            log.error("model error: rejecting", extra={"part_id": part_id, "error": repr(exc)})
            return self.fault(part_id, "model_error", frame_ts, frame_mono)
        if j.fault:
            log.warning("guard: the model may not judge this part; rejecting",
                        extra={"part_id": part_id, "fault": j.fault, "p_defect": j.p_defect,
                               **(j.features.to_dict() if j.features else {})})
        # p exactly as the model gave it (scale x q): rounded, a part at the threshold would show
        # p_defect < threshold beside decision reject. A guard fault keeps p as evidence.
        return self._record(part_id, j.decision, j.p_defect, j.reason, frame_ts, frame_mono)

    def fault(self, part_id: str, what: str, frame_ts: float | None, frame_mono: float | None) -> dict[str, Any]:
        """A part that could not be inspected is rejected, with the reason."""
        return self._record(part_id, "reject", None, f"fault:{what}", frame_ts, frame_mono)

    def _record(self, part_id: str, decision: str, p: float | None, reason: str, frame_ts: float | None,
                frame_mono: float | None) -> dict[str, Any]:
        now = time.time()
        latency = (time.monotonic() - frame_mono) * 1000 if frame_mono is not None else None
        record = {
            "part_id": part_id,
            "ts": iso(now),
            "frame_ts": iso(frame_ts) if frame_ts is not None else None,
            "decision": decision,
            "p_defect": p,
            "threshold": self.threshold,
            "reason": reason,
            "model": self.model_id,
            "latency_ms": None if latency is None else round(latency, 2),
        }
        if self.recipe is not None:  # without recipes the record stays as it always was
            record["recipe"] = self.recipe
        return record
