"""Hard examples: the fit images the `--init` bundle judges worst, shown more often, and the
defects among them augmented so that their evidence survives.

Why: the shipped bundle scores 14 of its own 3007 fit defects below p 0.5: pits of a few pixels
on the flange, the castings of the two validation pinholes that set every threshold since
November. Line augmentation draws a motion streak of up to 7 px and a defocus on every image,
which can erase such a pit while its label still says defect. A defect mined here is shown
`repeats` times per pass of the fit images with at most trainer.augment.GENTLE_MOTION of streak
and no defocus; a good part the bundle scores at or above its own threshold is shown as often,
augmented as usual, so the network is pushed to tell the two apart rather than to doubt every
good part. Mining reads fit images only. Tried once (`line-hard`, docs/training.md): the network
moved the mined defects and good parts together and the run lost the line rule; an option, not
the default.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.model import Classifier
from trainer.options import OutputError
from trainer.resume import ResumeMismatch

log = logging.getLogger(__name__)

HARD_DEFECT_P = 0.5  # a fit defect the init bundle scores below this is hard
RECORD = "hard_examples.json"  # in checkpoints/: what was mined, reused on --resume


@dataclass(frozen=True)
class Mined:
    """Indices into the fit images, and the init bundle's score of each fit image."""

    defects: np.ndarray
    goods: np.ndarray
    p: np.ndarray
    threshold: float

    def gentle(self, n: int) -> np.ndarray:
        """(n,) bool: the fit images augmented gently (the mined defects)."""
        flags = np.zeros(n, bool)
        flags[self.defects] = True
        return flags

    def pool(self, n: int, repeats: int) -> np.ndarray:
        """Every fit index once, each mined one `repeats` times in all: what an epoch draws from."""
        mined = np.concatenate([self.defects, self.goods]).astype(np.int64)
        return np.concatenate([np.arange(n, dtype=np.int64), np.repeat(mined, repeats - 1)])

    def to_record(self, names: list[str]) -> dict[str, Any]:
        def named(idx: np.ndarray) -> list[dict[str, Any]]:
            return [{"image": names[i], "p_defect": round(float(self.p[i]), 4)} for i in idx]

        return {"hard_defect_p": HARD_DEFECT_P, "threshold": self.threshold,
                "defects": named(self.defects), "goods": named(self.goods)}


def init_bundle(init: Path) -> bundle_fmt.Bundle:
    """The bundle to mine with; OutputError naming it where it is none (before --out is touched)."""
    try:
        return bundle_fmt.load(init)
    except bundle_fmt.BundleError as exc:
        raise OutputError(f"--hard-examples mines with the --init bundle, and {init} is none: {exc}") from None


def mine(init: bundle_fmt.Bundle, fit_x: np.ndarray, fit_y: np.ndarray) -> Mined:
    """Score the fit images with the init bundle's own int8 model, views and rim finder."""
    p = Classifier.from_bundle(init).predict(fit_x)
    defects = np.flatnonzero((fit_y == 1) & (p < HARD_DEFECT_P))
    goods = np.flatnonzero((fit_y == 0) & (p >= init.threshold))
    log.info("hard fit examples mined", extra={"init": str(init.path), "defects": len(defects),
                                               "goods": len(goods), "init_threshold": init.threshold})
    return Mined(defects, goods, p, float(init.threshold))


def mined_for_run(ckpt: Path, init: bundle_fmt.Bundle, fit_x: np.ndarray, fit_y: np.ndarray, names: list[str]) -> Mined:
    """The run's mined set: read back on --resume (the same images, whatever the interpreter's
    threads do to a score at the boundary), mined and recorded in `ckpt` otherwise."""
    path = ckpt / RECORD
    if path.is_file():
        rec = json.loads(path.read_text())
        index = {name: i for i, name in enumerate(names)}
        try:
            defects, goods = (np.array([index[e["image"]] for e in rec[k]], np.int64) for k in ("defects", "goods"))
        except KeyError as exc:
            raise ResumeMismatch(f"{path}: names a fit image this run does not have ({exc}); start afresh "
                                 "with --force") from exc
        p = np.full(len(names), np.nan)
        for k, idx in (("defects", defects), ("goods", goods)):
            p[idx] = [e["p_defect"] for e in rec[k]]
        return Mined(defects, goods, p, float(rec["threshold"]))
    mined = mine(init, fit_x, fit_y)
    path.write_text(json.dumps(mined.to_record(names), indent=1) + "\n")
    return mined
