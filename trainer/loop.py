"""The Keras training loop of a fit: strategy, callbacks, metrics, learning-rate schedule,
weight averaging and batch-norm recalibration; returns the chosen weights, writes no product."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edge.vision.partview import InputSpec
from edge.vision.preprocess import IMAGE_SIZE
from trainer import distill, report, resume
from trainer.augment import AugmentConfig
from trainer.data import eval_dataset, train_dataset
from trainer.models import ARCHITECTURES
from trainer.options import FLOAT_MODEL, FitOptions

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training produced no usable model (it diverged); no bundle is written."""


def _strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        log.info("training on GPUs with MirroredStrategy", extra={"gpus": len(gpus)})
        return tf.distribute.MirroredStrategy()
    if gpus:
        log.info("training on one GPU")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    log.info("no GPU found: training on the CPU", extra={"threads": os.cpu_count()})
    return tf.distribute.get_strategy()


class EpochLog(keras.callbacks.Callback):
    def __init__(self, epochs: int, label: str = "epoch") -> None:
        super().__init__()
        self.epochs = epochs
        self.label = label
        self.t0 = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        log.info(f"{self.label} {epoch + 1}/{self.epochs} {values} ({time.perf_counter() - self.t0:.0f}s)")


class StopOnNonFinite(keras.callbacks.Callback):
    """Stop with TrainingError when an epoch's loss or validation loss is NaN or infinite.

    Such weights score every part alike (NaN compares false, so the edge would reject
    all), and Keras trains on regardless. Placed first among the callbacks, it raises
    before the epoch is backed up, checkpointed or logged, so --resume never continues
    from diverged weights. Checked per epoch, not per batch: a per-batch check would
    synchronise every step with the host.
    """

    def __init__(self, label: str, rate_flag: str, rate: float) -> None:
        super().__init__()
        self.label, self.rate_flag, self.rate = label, rate_flag, rate

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise TrainingError(
                    f"{self.label} {epoch + 1}: {key} became {float(value)} (non-finite): training diverged; "
                    f"try a lower {self.rate_flag} (now {self.rate:g}). No bundle written")


RANDOM_STATE = "random_state.json"  # under checkpoints/, beside Keras' backup/
SWA_MODEL, SWA_RECORD = "swa.keras", "swa.json"  # under checkpoints/: a finished weight-averaging phase


def _seed_states(model: keras.Model) -> list[Any]:
    """The counters of the model's seed generators (dropout's): its only random state."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


class RandomStateBackup(keras.callbacks.Callback):
    """Save the model's random state with each epoch's backup.

    BackupAndRestore saves weights and optimizer but not the seed generators' counters,
    so a resumed run would draw the first epochs' dropout masks again. Runs after it at
    each epoch's end; the epoch tag tells restore_random_state which backup it belongs to.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        states = [np.asarray(v).tolist() for v in _seed_states(self.model)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"epoch": epoch + 1, "states": states}))
        tmp.replace(self.path)


def restore_random_state(model: keras.Model, path: Path, epoch: int) -> None:
    """Put back the seed generators' counters saved at the end of `epoch` (see RandomStateBackup)."""
    variables = _seed_states(model)
    if not variables:
        return
    try:
        saved = json.loads(path.read_text())
        states = saved["states"] if saved.get("epoch") == epoch else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        states = None
    if not isinstance(states, list) or len(states) != len(variables):
        log.warning("the checkpoints carry no random state for their last epoch (made before it was saved): "
                    "the resumed epochs' dropout masks will differ from an uninterrupted run's",
                    extra={"expected": str(path), "epoch": epoch})
        return
    for v, state in zip(variables, states, strict=True):
        v.assign(np.asarray(state, dtype=v.dtype))


def _best_val_loss(history_csv: Path) -> float | None:
    if not history_csv.is_file():
        return None
    import csv

    with open(history_csv, newline="") as f:
        values = [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")]
    return min(values) if values else None


def _learning_rate(opts: FitOptions) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """One epoch of warm-up, then cosine decay to 1% for the default architecture.

    With a constant or plateau-driven rate, batch-norm's moving statistics lag the
    weights and validation swings from 99.8% to chance between epochs; a rate that
    decays smoothly lets them settle, so the last epochs are also the best ones. The
    schedule is a function of the optimizer's step, so --resume continues it exactly.
    The notebook's CNN keeps the notebook's constant rate.
    """
    if opts.arch == "seed":
        return opts.learning_rate
    total = opts.epochs * opts.steps_per_epoch
    warmup = min(opts.steps_per_epoch, total // 2)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=opts.learning_rate / 10, decay_steps=max(1, total - warmup), alpha=0.01,
        warmup_target=opts.learning_rate, warmup_steps=warmup,
    )


def train(opts: FitOptions, fit_x: np.ndarray, fit_y: np.ndarray, val_x: np.ndarray,
          val_y: np.ndarray, aug: AugmentConfig,
          teachers: list[distill.Teacher] | None = None, fit_inputs: np.ndarray | None = None,
          fit_circles: np.ndarray | None = None,
          spec: InputSpec | None = None, pool: np.ndarray | None = None,
          gentle: np.ndarray | None = None) -> tuple[keras.Model, list[dict[str, float]]]:
    """Fit the model (continuing the checkpoints on --resume); returns the chosen weights and
    the per-epoch history. Writes checkpoints/ and history.csv, no product of the run.

    `fit_x` are the raw fit images (augmented per step), `fit_inputs` the same as the model
    sees them un-augmented (masked for a part-only spec), `val_x` validation model inputs; `pool`
    and `gentle` the hard examples' repeats and mild augmentation (trainer.hard, trainer.data)."""
    spec = spec or InputSpec()
    fit_inputs = fit_x if fit_inputs is None else fit_inputs
    out, ckpt = opts.out, opts.out / "checkpoints"
    keras.utils.set_random_seed(opts.seed)
    strategy = _strategy()
    with strategy.scope():
        model = ARCHITECTURES[opts.arch](IMAGE_SIZE)
        if opts.init is not None:
            model.set_weights(keras.models.load_model(Path(opts.init) / FLOAT_MODEL, compile=False).get_weights())
        _compile(model, _learning_rate(opts))
    log.info("model built", extra={"arch": opts.arch, "params": model.count_params(),
                                   "init": str(opts.init) if opts.init else "random"})
    callbacks = [
        StopOnNonFinite("epoch", "--learning-rate", opts.learning_rate),  # first: before anything is saved
        keras.callbacks.BackupAndRestore(str(ckpt / resume.BACKUP), delete_checkpoint=False),
        RandomStateBackup(ckpt / RANDOM_STATE),
        keras.callbacks.ModelCheckpoint(
            str(ckpt / "best.keras"), monitor="val_loss", save_best_only=True,
            initial_value_threshold=_best_val_loss(out / "history.csv") if opts.resume else None,
        ),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=opts.resume),
        EpochLog(opts.epochs),
    ]

    def stream(epoch: int) -> tf.data.Dataset:
        """The batches from the start of `epoch` (0-based) on, as an uninterrupted run sees them."""
        data = train_dataset(fit_x, fit_y, opts.batch_size, aug, opts.seed, start_step=epoch * opts.steps_per_epoch,
                             circles=fit_circles, margin=spec.margin, fill=float(spec.fill), tone=spec.tone,
                             pool=pool, gentle=gentle)
        return distill.soften(data, teachers, opts.distill_weight) if teachers else data

    # BackupAndRestore restores the weights and the epoch count, not the input pipeline's
    # position nor dropout's random state: both are set here to where the backup was made.
    done = resume.completed_epochs(ckpt) if opts.resume else 0
    if done:
        log.info("resuming", extra={"epochs_done": done, "epochs": opts.epochs})
        with strategy.scope():
            restore_random_state(model, ckpt / RANDOM_STATE, done)
    val_data = eval_dataset(val_x, val_y, opts.batch_size)
    if done < opts.epochs:  # the main schedule moves on: a weight average taken after it is stale
        for name in (SWA_MODEL, SWA_RECORD):
            (ckpt / name).unlink(missing_ok=True)
    model.fit(stream(done), steps_per_epoch=opts.steps_per_epoch, epochs=opts.epochs,
              validation_data=val_data, callbacks=callbacks, verbose=0)
    candidates = {"best_checkpoint": keras.models.load_model(ckpt / "best.keras"), "final_weights": model}
    if opts.swa_epochs > 0:
        with strategy.scope():
            candidates["weight_average"] = (_finished_swa(opts, ckpt)
                                            or swa_phase(opts, model, stream(opts.epochs), val_data, ckpt))
    has_bn = any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    best = _choose_weights(opts, candidates, fit_inputs, val_data, recalibrate=opts.recalibrate_bn and has_bn)
    return best, report.read_history(out / "history.csv")


@keras.saving.register_keras_serializable(package="edge_train")
class LabelAccuracy(keras.metrics.BinaryAccuracy):
    """Accuracy against the rounded target: the hard label, also when distillation blends
    the teachers' opinion into it (their share is at most one half, see distill)."""

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        return super().update_state(keras.ops.round(y_true), y_pred, sample_weight)


@keras.saving.register_keras_serializable(package="edge_train")
class LabelAUC(keras.metrics.AUC):
    """ROC-AUC against the rounded target (see LabelAccuracy)."""

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        return super().update_state(keras.ops.round(y_true), y_pred, sample_weight)


def _compile(model: keras.Model, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy",
                  metrics=[LabelAccuracy(name="accuracy"), LabelAUC(name="auc")])


class WeightAverage(keras.callbacks.Callback):
    """Running mean of the model's weights at the end of each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.mean: list[np.ndarray] | None = None
        self.count = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        weights = [np.asarray(w, np.float64) for w in self.model.get_weights()]
        self.count += 1
        if self.mean is None:
            self.mean = weights
        else:
            self.mean = [m + (w - m) / self.count for m, w in zip(self.mean, weights, strict=True)]


def _finished_swa(opts: FitOptions, ckpt: Path) -> keras.Model | None:
    """The weight average a finished phase left in the checkpoints, where it was taken with these
    settings after these main epochs; None otherwise (the phase runs)."""
    try:
        record = json.loads((ckpt / SWA_RECORD).read_text())
        same = (record["epochs"], record["learning_rate"], record["after_epochs"]) == (
            opts.swa_epochs, opts.swa_learning_rate, opts.epochs)
        if not same or not (ckpt / SWA_MODEL).is_file():
            return None
        averaged = keras.models.load_model(ckpt / SWA_MODEL, compile=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    _compile(averaged, opts.swa_learning_rate)
    opts.extra["weight_average"] = {k: record[k] for k in ("epochs", "learning_rate", "val_loss_per_epoch")}
    log.info("weight average reused from the checkpoints (its phase had finished)",
             extra={"epochs": record["epochs"], "learning_rate": record["learning_rate"]})
    return averaged


def swa_phase(opts: FitOptions, model: keras.Model, train_data: tf.data.Dataset,
              val_data: tf.data.Dataset, ckpt: Path | None = None) -> keras.Model:
    """Stochastic weight averaging: train `opts.swa_epochs` more epochs at a constant rate
    and return a new model holding the mean of the weights at each epoch's end.

    At a constant rate the weights wander around a wide low-loss region; their mean sits
    nearer its centre than any single point, which generalises better and costs nothing
    at inference (Izmailov et al., 2018). `model` keeps training and ends at the last
    epoch's weights; the averaged model's batch-norm statistics need recomputing (see
    recalibrate_batchnorm). A finished phase is saved under `ckpt` and reused by --resume
    when the main epochs and the phase's settings are the same (a resume of a finished run
    then only redoes the steps after training); an interrupted phase is repeated whole.
    """
    if ckpt is not None:  # written again only once this phase's average is saved whole
        (ckpt / SWA_RECORD).unlink(missing_ok=True)
    final = model.get_weights()
    _compile(model, opts.swa_learning_rate)
    model._initial_epoch = None  # set by BackupAndRestore on --resume; would skip this fit's epochs
    average = WeightAverage()
    callbacks = [StopOnNonFinite("swa epoch", "--swa-learning-rate", opts.swa_learning_rate), average,
                 EpochLog(opts.swa_epochs, "swa epoch")]
    history = model.fit(train_data, steps_per_epoch=opts.steps_per_epoch, epochs=opts.swa_epochs,
                        validation_data=val_data, callbacks=callbacks, verbose=0)
    opts.extra["weight_average"] = {
        "epochs": opts.swa_epochs, "learning_rate": opts.swa_learning_rate,
        "val_loss_per_epoch": [round(float(v), 5) for v in history.history.get("val_loss", [])]}
    if average.mean is None:
        raise RuntimeError("weight averaging ran no epoch")
    averaged = ARCHITECTURES[opts.arch](IMAGE_SIZE)
    averaged.set_weights([m.astype(np.float32) for m in average.mean])
    _compile(averaged, opts.swa_learning_rate)
    model.set_weights(final)  # the "final weights" candidate stays the end of the main schedule
    log.info("weight average taken", extra={"epochs": average.count, "learning_rate": opts.swa_learning_rate})
    if ckpt is not None:
        averaged.save(ckpt / SWA_MODEL)
        (ckpt / SWA_RECORD).write_text(json.dumps({**opts.extra["weight_average"], "after_epochs": opts.epochs}))
    return averaged


def _choose_weights(opts: FitOptions, candidates: dict[str, keras.Model], fit_x: np.ndarray,
                    val_data: tf.data.Dataset, recalibrate: bool) -> keras.Model:
    """Keep the candidate weights (best-by-val_loss checkpoint, final weights, weight
    average) with the lowest validation loss, after recomputing batch-norm statistics.

    The checkpoint was picked with lagging statistics, so its choice is partly noise; the
    final weights (end of the decayed schedule) are usually as good once their statistics
    are exact. Up to 2048 un-augmented fit images are enough for exact statistics.
    """
    if len(candidates) == 1 or (not recalibrate and "weight_average" not in candidates):
        return candidates["best_checkpoint"]
    rng = np.random.default_rng(opts.seed)
    sample = fit_x[np.sort(rng.choice(len(fit_x), size=min(2048, len(fit_x)), replace=False))]

    def score(m: keras.Model) -> dict[str, float]:
        return {k: round(float(v), 5) for k, v in m.evaluate(val_data, verbose=0, return_dict=True).items()}

    info: dict[str, Any] = {"images": len(sample) if recalibrate else 0}
    for name, m in candidates.items():
        before = score(m)
        if recalibrate:
            recalibrate_batchnorm(m, sample, opts.batch_size)
        info[name] = {"validation_before": before, "validation_after": score(m) if recalibrate else before}
    chosen = min(candidates, key=lambda k: info[k]["validation_after"]["loss"])
    info["chosen"] = chosen
    opts.extra["batchnorm_recalibration"] = info
    log.info("weights chosen by validation loss", extra={"chosen": chosen, **{
        k: v["validation_after"] for k, v in info.items() if isinstance(v, dict)}})
    return candidates[chosen]


def recalibrate_batchnorm(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> int:
    """Replace each batch-norm layer's moving statistics by the exact statistics of its
    inputs over `images`, with the final weights ("precise BN").

    During training the moving averages trail weights that keep changing, and they are
    averaged over augmented batches; the model is then evaluated and quantized with
    statistics that belong to neither. Layers are done in order, each seeing its
    predecessors already recalibrated. Returns the number of layers updated.
    """
    layers_bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for bn in layers_bn:
        features = keras.Model(model.inputs, bn.input)
        s1 = s2 = 0.0
        n = 0
        for i in range(0, len(images), batch_size):
            f = np.asarray(features(images[i:i + batch_size].astype(np.float32), training=False), np.float64)
            axes = tuple(range(f.ndim - 1))
            s1 = s1 + f.sum(axis=axes)
            s2 = s2 + np.square(f).sum(axis=axes)
            n += f.size // f.shape[-1]
        mean = s1 / n
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(np.maximum(s2 / n - mean**2, 0.0).astype(np.float32))
    return len(layers_bn)
