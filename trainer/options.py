"""What a fit is asked to do and where it writes: the options, the run folder's files, and
the refusals that come before any work (shared by the fit, the training loop and the report)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.augment import AUGMENTATIONS, AugmentConfig

FLOAT_MODEL = "model.keras"
# A model the int8 gate refused: kept for a look, never a bundle (no model.json beside it).
REJECTED_TFLITE = "rejected.tflite"
REJECTED_FLOAT = "rejected.keras"  # adapt: the refused fine-tune's float weights
REJECTED_RECORD = "rejected.json"  # adapt: what was tried, and the gate's words
# What a finished (or gate-rejected) run leaves besides its resume state: all of it describes
# one trained model, so a resume that trains another replaces all of it at once.
PRODUCTS = ("model.tflite", "model.json", REJECTED_TFLITE, FLOAT_MODEL, "metrics.json", "report.md", "figures")
RUN_FILES = (*PRODUCTS, "history.csv", "skipped.txt", "checkpoints")


class OutputError(ValueError):
    """The output folder cannot be used as asked."""


@dataclass
class FitOptions:
    data: Path
    out: Path
    arch: str = "edge"
    epochs: int = 25
    steps_per_epoch: int = 150
    batch_size: int = 64
    seed: int = 123  # training randomness: weights, batch order, augmentation, samples
    split_seed: int = 123  # fit/validation split only, so runs of other seeds share a validation set
    val_fraction: float = 0.2
    learning_rate: float = 1e-3
    threshold_policy: str = "cost:20"
    augment: str = "auto"  # auto | notebook | line | line-sharpen | line-crisp | line-part | line-pinhole
    init: Path | None = None  # bundle whose float weights start the training (same --arch)
    rim_finder: str = "half"  # edge.vision.locate.RIM_FINDERS: the rims training masks at, recorded in the bundle
    views: int = 0  # test-time rotations/flips averaged in logit space; 0: 1 or 8 by the line rule (lineval)
    output: str = "logit"  # edge.vision.partview.OUTPUTS: what the int8 model outputs (trainer.export)
    tone: str = "none"  # edge.vision.tone.TONES: "match" maps each part's tones onto the fit images' (edge.vision.tone)
    second_camera: Path | None = None  # labelled folder of another camera, reported (e.g. casting_512_dark)
    resume: bool = False
    force: bool = False
    limit: int | None = None  # first N images per class and split: quick runs and CI
    max_int8_drop: float = 0.5  # accuracy points int8 may lose against float
    robustness_seed: int = 0
    calibration_images: int = 300
    recalibrate_bn: bool = True  # exact batch-norm statistics after training (see recalibrate_batchnorm)
    swa_epochs: int = 0  # extra epochs at a constant rate whose weights are averaged (see swa_phase)
    swa_learning_rate: float = 2.5e-4
    teachers: list[Path] = field(default_factory=list)  # bundles whose averaged opinion is learnt too
    distill_weight: float = 0.5  # share of the teachers' probability in each target (<= 0.5)
    hard_examples: int = 0  # times each fit image the --init bundle judges worst is shown (trainer.hard); 0: off
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def augment_config(self) -> tuple[str, AugmentConfig]:
        name = self.augment if self.augment != "auto" else ("notebook" if self.arch == "seed" else "line-part")
        return name, AUGMENTATIONS[name]


def check_output(opts: FitOptions) -> None:
    """Refuse an --out that cannot be used as asked, touching nothing, before any work."""
    out = opts.out
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if opts.resume:
        if not (out / "checkpoints").is_dir():
            raise OutputError(f"{out}: nothing to resume (no checkpoints/ folder); drop --resume")
    elif not opts.force and out.is_dir() and any((out / f).exists() for f in RUN_FILES):
        raise OutputError(
            f"{out}: output folder already holds a run; pass --resume to continue it, "
            "--force to replace it, or choose another --out"
        )


def prepare_output(opts: FitOptions) -> None:
    """Clear the replaced run (--force) and create checkpoints/: only once the data passed every
    check, so a run refused for its data leaves no folder that the corrected rerun must --force."""
    if opts.force:
        remove(opts.out, RUN_FILES)
    (opts.out / "checkpoints").mkdir(parents=True, exist_ok=True)


def remove(out: Path, names: tuple[str, ...]) -> list[str]:
    removed = [f for f in names if (out / f).exists() or (out / f).is_symlink()]
    for f in removed:
        p = out / f
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    return removed
