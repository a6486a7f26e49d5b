"""Drift watch: is the line still showing the model what it was trained on?

Lighting ages, a camera gets knocked, a new casting batch looks different: the model
then keeps answering, confidently and wrongly. Each inspected part feeds simple
statistics; their mean over the last `window` parts is compared with a baseline:
- brightness, contrast and sharpness of the crop (mean and std of its pixels, std of its
  Laplacian) against the training crops' per-image distribution the bundle recorded
  (sharpness: against the line's first parts for bundles that did not record it). The
  model reads crispness as evidence, so a lens drifting out of focus or a changed
  in-camera sharpening moves its scores before anything else shows;
- part diameter in the frame, mean p_defect and the reject rate against the line's own
  first `baseline_parts` parts (no training-time equivalent: the dataset is not the line).
A signal is "drifting" while the window mean is more than `k` baseline standard
deviations off (for the reject rate: a binomial z-score above `reject_z`), and clears
once back within 80% of that limit. Warnings are logged on each change and exposed in
the status and metrics; nothing is rejected for it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

# Spread of per-image brightness / contrast in casting_data/train (every 10th image),
# for bundles made before the trainer recorded them.
FALLBACK_BRIGHTNESS_STD = 8.0
FALLBACK_CONTRAST_STD = 3.4
# A drifting signal clears when its deviation is below this fraction of the limit.
CLEAR_FRACTION = 0.8


def crop_stats(crop: np.ndarray) -> dict[str, float]:
    """Per-image statistics of a grayscale crop; the trainer records their spread over the fit images."""
    f = crop.astype(np.float32)
    return {"brightness": float(f.mean()), "contrast": float(f.std()),
            "sharpness": float(cv2.Laplacian(f, cv2.CV_32F).std())}


@dataclass(frozen=True)
class DriftSettings:
    window: int = 100
    baseline_parts: int = 200
    k: float = 2.0  # baseline standard deviations a window mean may move
    reject_z: float = 4.0
    size_rel_std: float = 0.03  # floor on the part-size spread, relative to its mean


class _Stat:
    """Baseline (mean, std) and a rolling window of observations."""

    def __init__(self, window: int, mean: float | None = None, std: float | None = None) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.mean, self.std = mean, std
        self.learning: list[float] = []

    def add(self, v: float, baseline_parts: int, std_floor: float = 0.0) -> None:
        self.values.append(v)
        if self.mean is None:
            self.learning.append(v)
            if len(self.learning) >= baseline_parts:
                a = np.asarray(self.learning)
                self.mean, self.std = float(a.mean()), max(float(a.std()), std_floor * abs(float(a.mean())))
                self.learning = []

    def window_mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None


class DriftWatch:
    SIGNALS = ("brightness", "contrast", "sharpness", "part_size", "p_defect", "reject_rate")

    IMAGE_SIGNALS = ("brightness", "contrast", "sharpness")  # baselines from the bundle's training images
    MODEL_SIGNALS = ("p_defect", "reject_rate")  # baselines that describe one model's answers

    def __init__(self, settings: DriftSettings, image_stats: dict[str, Any] | None = None) -> None:
        self.s = settings
        w = settings.window
        self.stats = {name: _Stat(w, *_image_baseline(image_stats, name)) for name in self.IMAGE_SIGNALS}
        self.stats.update({name: _Stat(w) for name in ("part_size", *self.MODEL_SIGNALS)})
        self.drifting: dict[str, bool] = dict.fromkeys(self.SIGNALS, False)

    def model_changed(self, image_stats: dict[str, Any] | None) -> None:
        """A reloaded bundle: judge the line as if the daemon had started with it.

        Its p_defect and reject rate mean nothing against the old model's, so both are
        learned again from the next parts; the image baselines become the new bundle's
        (learned again where it records none). The part size is the camera's geometry,
        not the model's: its baseline and every window of crop statistics are kept.
        """
        for name in self.IMAGE_SIGNALS:
            self.stats[name].mean, self.stats[name].std = _image_baseline(image_stats, name)
            self.stats[name].learning = []
        for name in self.MODEL_SIGNALS:
            self.stats[name] = _Stat(self.s.window)
        log.info("drift baselines follow the new model",
                 extra={"relearning": [n for n, st in self.stats.items() if st.mean is None]})
        self._update()

    def observe(self, crop: np.ndarray | None, diameter_px: float | None, decision: dict[str, Any]) -> None:
        """One part the model judged (faults say nothing about the images and are skipped)."""
        if decision.get("p_defect") is None:
            return
        bp = self.s.baseline_parts
        if crop is not None:
            for name, value in crop_stats(crop).items():
                self.stats[name].add(value, bp)
        if diameter_px is not None:
            self.stats["part_size"].add(float(diameter_px), bp, self.s.size_rel_std)
        self.stats["p_defect"].add(float(decision["p_defect"]), bp, 0.01)
        self.stats["reject_rate"].add(1.0 if decision["decision"] == "reject" else 0.0, bp)
        self._update()

    def _update(self) -> None:
        for name, st in self.stats.items():
            # Hysteresis: a signal that is drifting clears only once well inside the limit,
            # so a window mean hovering at the limit does not flap warning / cleared.
            now = self._off(name, st, CLEAR_FRACTION if self.drifting[name] else 1.0)
            if now != self.drifting[name]:
                self.drifting[name] = now
                extra = {"signal": name, "window_mean": _r(st.window_mean()), "baseline": _r(st.mean),
                         "baseline_std": _r(st.std), "window": len(st.values)}
                if now:
                    log.warning("drift: the line no longer looks like the baseline", extra=extra)
                else:
                    log.info("drift cleared", extra=extra)

    def _off(self, name: str, st: _Stat, limit_fraction: float = 1.0) -> bool:
        if st.mean is None or st.std is None or len(st.values) < self.s.window:
            return False
        m = st.window_mean()
        assert m is not None
        if name == "reject_rate":
            p = min(max(st.mean, 1.0 / self.s.baseline_parts), 1 - 1.0 / self.s.baseline_parts)
            z = (m - p) / math.sqrt(p * (1 - p) / len(st.values))
            return abs(z) > self.s.reject_z * limit_fraction
        return abs(m - st.mean) > self.s.k * max(st.std, 1e-9) * limit_fraction

    def state(self) -> dict[str, bool]:
        return dict(self.drifting)

    def summary(self) -> dict[str, Any]:
        return {name: {"drifting": self.drifting[name], "window_mean": _r(st.window_mean()),
                       "baseline": _r(st.mean)} for name, st in self.stats.items()}


def _image_baseline(image_stats: dict[str, Any] | None, name: str) -> tuple[float | None, float | None]:
    """(mean, std) a bundle records for one image signal; (None, None) = learn it on the line."""
    st = image_stats or {}
    if st.get(name):
        return st[name]["mean"], st[name]["std"]
    older = {"brightness": ("fit_mean", FALLBACK_BRIGHTNESS_STD), "contrast": ("fit_std", FALLBACK_CONTRAST_STD)}
    if name in older and st.get(older[name][0]) is not None:  # bundles before per-image stats: pixel mean/std
        return st[older[name][0]], older[name][1]
    return None, None


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
