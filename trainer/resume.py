"""What a run's checkpoints were trained with, so `--resume` cannot silently change it.

Resuming with another seed, augmentation, split or data would continue the weights under
different conditions, and the bundle would then record a command that never produced
it. The options that shape the weights are written next to the checkpoints when a run
starts and compared when it resumes. `--epochs` may change (to extend a run); options
that act only after training (threshold policy, int8 gate, weight averaging, batch-norm
recalibration) may change too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECORD = "options.json"
BACKUP = "backup"  # Keras BackupAndRestore's folder under checkpoints/: last epoch's state
# FitOptions fields that shape the trained weights, besides the data itself.
TRAINING_OPTIONS = ("arch", "steps_per_epoch", "batch_size", "seed", "split_seed", "val_fraction",
                    "learning_rate", "augment", "limit", "teachers", "distill_weight", "init", "rim_finder", "tone")
# Values of options added after records were first written, for records that lack them.
_ADDED_LATER = {"teachers": [], "distill_weight": 0.5, "init": None, "rim_finder": "half", "tone": "none"}


class ResumeMismatch(ValueError):
    """`--resume` was asked with options or data other than the checkpoints'."""


def _flag(key: str) -> str:
    return "--teacher" if key == "teachers" else "--" + key.replace("_", "-")


def _saved(checkpoints: Path) -> dict[str, Any] | None:
    path = checkpoints / RECORD
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if isinstance(saved.get("options"), dict) and isinstance(saved.get("train_fingerprint"), str):
            return saved
        problem = "no options or train_fingerprint"
    except (OSError, ValueError, AttributeError) as exc:
        problem = str(exc)
    raise ResumeMismatch(f"{path}: unreadable ({problem}); cannot tell what the checkpoints were trained "
                         "with: start afresh with --force")


def _key(option: str, value: Any) -> Any:
    """What must match on resume: for --init the starting weights' digest, wherever the bundle now lies."""
    if option == "init" and isinstance(value, dict):
        return value.get("float_model_sha256")
    return value


def check_options(checkpoints: Path, options: dict[str, Any]) -> None:
    """Before any work: the options (FitOptions fields, `augment` resolved) must match the record."""
    saved = _saved(checkpoints)
    if saved is None:
        return
    was = {k: saved["options"].get(k, _ADDED_LATER.get(k)) for k in TRAINING_OPTIONS}
    # Without teachers the distillation weight shapes nothing (runs before --distill-weight needed
    # --teacher may record any value): it must match only where there is something to weigh.
    ignore = {"distill_weight"} if not was["teachers"] and not options["teachers"] else set()
    differs = [f"{_flag(k)} {was[k]!r} (now {options[k]!r})" for k in TRAINING_OPTIONS
               if k not in ignore and _key(k, was[k]) != _key(k, options[k])]
    if differs:
        raise ResumeMismatch(
            f"{checkpoints.parent}: --resume with other training options than the checkpoints were made "
            f"with: {'; '.join(differs)}. Repeat the original options (recorded in {checkpoints / RECORD}) "
            "or start afresh with --force"
        )


def check_data(checkpoints: Path, train_fingerprint: str) -> None:
    """Once the data is read, before anything is written: a resumed run must see the same images."""
    saved = _saved(checkpoints)
    if saved is not None and saved["train_fingerprint"] != train_fingerprint:
        raise ResumeMismatch(
            f"{checkpoints.parent}: --resume on other training data than the checkpoints were made with "
            f"(train fingerprint now {train_fingerprint[:12]}..., recorded {saved['train_fingerprint'][:12]}...). "
            "Point --data at the original images or start afresh with --force"
        )


def record(checkpoints: Path, options: dict[str, Any], train_fingerprint: str) -> None:
    """Write the record for a new run, or for checkpoints made before records existed."""
    if _saved(checkpoints) is not None:
        return
    if any(p.name != RECORD for p in checkpoints.iterdir()):
        log.warning("checkpoints carry no record of their options (made before it existed): "
                    "resuming on trust that this command repeats the original options",
                    extra={"checkpoints": str(checkpoints)})
    saved = {"options": {k: options[k] for k in TRAINING_OPTIONS}, "train_fingerprint": train_fingerprint}
    (checkpoints / RECORD).write_text(json.dumps(saved, indent=2, allow_nan=False) + "\n")


def completed_epochs(checkpoints: Path) -> int:
    """Epochs the checkpoints hold, from the metadata Keras' BackupAndRestore writes with them.

    Known before the input pipeline is built, so a resumed run can start the data stream
    where the interrupted one stopped (see trainer.data.train_dataset); 0 when no epoch
    was completed.
    """
    path = checkpoints / BACKUP / "training_metadata.json"
    if not path.exists():
        return 0
    try:
        epoch = json.loads(path.read_text())["epoch"]
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
            return epoch
        problem = f"epoch {epoch!r} is not a count"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = str(exc)
    raise ResumeMismatch(f"{path}: unreadable ({problem}); cannot tell how far the run got: "
                         "start afresh with --force")
