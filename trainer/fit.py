"""`edge-train fit`: data -> trained Keras model -> verified int8 bundle + report."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edge import bundle as bundle_fmt
from edge.dataset import (
    CLASS_NAMES,
    POSITIVE_CLASS,
    DatasetError,
    LoadedImages,
    Sample,
    file_digests,
    fingerprint,
    first_per_class,
    list_labelled,
    load_samples,
    stratified_split,
)
from edge.drift import crop_stats
from edge.metrics import summarize
from edge.model import Classifier
from edge.guard import Guard
from edge.guard import calibrate as calibrate_guard
from edge.override import SCORES_KEY, score_record
from edge.judge import Judge, reject_scores
from edge.partview import InputSpec, circles_and_backdrops, mask_outside
from edge.perturb import FOCUS_CHANGES, PerturbConfig, perturb_all, refocus_all
from edge.preprocess import IMAGE_SIZE
from trainer import distill, lineval, report, resume
from trainer.augment import AUGMENTATIONS, AugmentConfig
from trainer.data import eval_dataset, train_dataset
from trainer.export import ExportError, check_int8_accuracy, to_int8_tflite
from trainer.models import ARCHITECTURES
from trainer.threshold import evidence, parse_policy

log = logging.getLogger(__name__)

FLOAT_MODEL = "model.keras"
# What a finished (or gate-rejected) run leaves besides its resume state: all of it describes
# one trained model, so a resume that trains another replaces all of it at once.
PRODUCTS = ("model.tflite", "model.json", "rejected.tflite", FLOAT_MODEL, "metrics.json", "report.md", "figures")
RUN_FILES = (*PRODUCTS, "history.csv", "skipped.txt", "checkpoints")


class OutputError(ValueError):
    """The output folder cannot be used as asked."""


class TrainingError(RuntimeError):
    """Training produced no usable model (it diverged); no bundle is written."""


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
    augment: str = "auto"  # auto | notebook | line | line-sharpen | line-crisp | line-part
    init: Path | None = None  # bundle whose float weights start the training (same --arch)
    views: int = 0  # test-time rotations/flips averaged in logit space; 0: 1 or 8 by the line rule (lineval)
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
        _remove(opts.out, RUN_FILES)
    (opts.out / "checkpoints").mkdir(parents=True, exist_ok=True)


def _remove(out: Path, names: tuple[str, ...]) -> list[str]:
    removed = [f for f in names if (out / f).exists() or (out / f).is_symlink()]
    for f in removed:
        p = out / f
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    return removed


def _json_text(value: Any, name: str) -> str:
    """JSON without NaN/Infinity tokens, which strict readers reject and no model should produce."""
    try:
        return json.dumps(value, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise TrainingError(f"{name} would hold a non-finite number: the trained model is unusable; "
                            "no bundle written") from None


def _load_split(root: Path, name: str, samples: list[Sample]) -> LoadedImages:
    t = time.perf_counter()
    loaded = load_samples(samples)
    for label, cls in enumerate(CLASS_NAMES):
        if not (loaded.labels == label).any():
            raise DatasetError(f"{root / name / cls}: no readable images left after skipping bad files")
    log.info("decoded split", extra={"split": name, "images": len(loaded.paths),
                                     "skipped": len(loaded.skipped), "s": round(time.perf_counter() - t, 1)})
    return loaded


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


def image_stats(images: np.ndarray) -> dict[str, Any]:
    """Per-image brightness, contrast and sharpness of the training crops: the edge's drift baseline."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    per_image = [crop_stats(img) for img in images]
    out: dict[str, Any] = {"fit_mean": round(float(flat.mean()), 2), "fit_std": round(float(flat.std()), 2)}
    for name in ("brightness", "contrast", "sharpness"):
        v = np.array([s[name] for s in per_image])
        out[name] = {"mean": round(float(v.mean()), 2), "std": round(float(v.std()), 2)}
    return out


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
          spec: InputSpec | None = None) -> tuple[keras.Model, list[dict[str, float]]]:
    """Fit the model (continuing the checkpoints on --resume); returns the chosen weights and
    the per-epoch history. Writes checkpoints/ and history.csv, no product of the run.

    `fit_x` are the raw fit images (augmented per step), `fit_inputs` the same as the model
    sees them un-augmented (masked for a part-only spec), `val_x` validation model inputs."""
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
                             circles=fit_circles, margin=spec.margin, fill=float(spec.fill))
        return distill.soften(data, teachers, opts.distill_weight) if teachers else data

    # BackupAndRestore restores the weights and the epoch count, not the input pipeline's
    # position nor dropout's random state: both are set here to where the backup was made.
    done = resume.completed_epochs(ckpt) if opts.resume else 0
    if done:
        log.info("resuming", extra={"epochs_done": done, "epochs": opts.epochs})
        with strategy.scope():
            restore_random_state(model, ckpt / RANDOM_STATE, done)
    val_data = eval_dataset(val_x, val_y, opts.batch_size)
    model.fit(stream(done), steps_per_epoch=opts.steps_per_epoch, epochs=opts.epochs,
              validation_data=val_data, callbacks=callbacks, verbose=0)
    candidates = {"best_checkpoint": keras.models.load_model(ckpt / "best.keras"), "final_weights": model}
    if opts.swa_epochs > 0:
        with strategy.scope():
            candidates["weight_average"] = swa_phase(opts, model, stream(opts.epochs), val_data)
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


def swa_phase(opts: FitOptions, model: keras.Model, train_data: tf.data.Dataset,
              val_data: tf.data.Dataset) -> keras.Model:
    """Stochastic weight averaging: train `opts.swa_epochs` more epochs at a constant rate
    and return a new model holding the mean of the weights at each epoch's end.

    At a constant rate the weights wander around a wide low-loss region; their mean sits
    nearer its centre than any single point, which generalises better and costs nothing
    at inference (Izmailov et al., 2018). `model` keeps training and ends at the last
    epoch's weights; the averaged model's batch-norm statistics need recomputing (see
    recalibrate_batchnorm). Not resumable on its own: --resume after the main epochs
    repeats the whole phase.
    """
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


def _int8_latency_ms(tflite: bytes, image: np.ndarray) -> float:
    clf = Classifier(tflite, num_threads=1)
    for _ in range(10):
        clf.p_defect(image)
    times = []
    for _ in range(100):
        t = time.perf_counter()
        clf.p_defect(image)
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1000, 3)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("n", "accuracy", "false_accepts", "false_rejects", "confusion")}


def _init_identity(opts: FitOptions) -> dict[str, str] | None:
    """The --init bundle's float model (path, sha256), checked before anything is written."""
    if opts.init is None:
        return None
    path = Path(opts.init) / FLOAT_MODEL
    if not path.is_file():
        raise OutputError(f"--init {opts.init}: no {FLOAT_MODEL} there (a bundle made by edge-train fit)")
    return {"path": str(opts.init), "float_model_sha256": bundle_fmt.sha256_file(path)}


def _rims(train_images: np.ndarray, test_images: np.ndarray, aug: AugmentConfig) -> dict[str, Any]:
    """Each image's rim circle (edge.partview, as the edge finds it) where the recipe needs it."""
    if not (aug.part_only or aug.backdrop > 0):
        return {}
    t = time.perf_counter()
    train_rims, train_table = circles_and_backdrops(train_images)
    test_rims, _ = circles_and_backdrops(test_images)
    missed = sum(not c.found for c in train_rims) + sum(not c.found for c in test_rims)
    log.info("rims located", extra={"images": len(train_rims) + len(test_rims), "fallback_to_framing": missed,
                                    "s": round(time.perf_counter() - t, 1)})
    return {"train": train_rims, "train_table": train_table, "test": test_rims, "fallbacks": missed}


def _masked(images: np.ndarray, rims: list[Any], spec: InputSpec) -> np.ndarray:
    return np.stack([mask_outside(img, c, spec.margin, spec.fill) for img, c in zip(images, rims, strict=True)])


def run(opts: FitOptions) -> dict[str, Any]:
    """The whole fit; returns the metrics dict. Raises DatasetError/OutputError/PolicyError/ResumeMismatch
    (before --out is touched), TrainingError (training diverged) or ExportError (int8 gate failed)."""
    if opts.arch not in ARCHITECTURES:
        raise OutputError(f"--arch {opts.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    policy = parse_policy(opts.threshold_policy)
    aug_name, aug = opts.augment_config()
    for split in ("train", "test"):
        if not (opts.data / split).is_dir():
            raise DatasetError(f"{opts.data / split}: missing (expected {opts.data}/train and {opts.data}/test)")
    teacher_ids = distill.identities(opts.teachers, opts.out)  # before the output folder is touched
    init_id = _init_identity(opts)
    check_output(opts)
    ckpt = opts.out / "checkpoints"
    # what the checkpoints are trained with
    as_run = _jsonable({**asdict(opts), "augment": aug_name, "teachers": teacher_ids, "init": init_id})
    if opts.resume:
        resume.check_options(ckpt, as_run)
        done = resume.completed_epochs(ckpt)
        if opts.epochs < done:
            raise resume.ResumeMismatch(
                f"{opts.out}: --epochs {opts.epochs} is fewer than the {done} epochs the checkpoints already "
                f"hold; resume with --epochs {done} or more, or start afresh with --force")
    t_start = time.perf_counter()

    # Every check on the data comes before --out is touched (see prepare_output).
    train_samples, test_samples = (first_per_class(list_labelled(opts.data / split), opts.limit)
                                   for split in ("train", "test"))
    train_set = _load_split(opts.data, "train", train_samples)
    test_set = _load_split(opts.data, "test", test_samples)
    skipped = train_set.skipped + test_set.skipped
    digests = file_digests(train_samples + test_samples)
    train_digests = {digests[p] for p in train_set.paths}
    unique = np.array([digests[p] not in train_digests for p in test_set.paths])
    train_fingerprint = fingerprint(train_samples, opts.data, digests)
    if opts.resume:
        resume.check_data(ckpt, train_fingerprint)

    fit_idx, val_idx = stratified_split(train_set.labels, opts.val_fraction, opts.split_seed)
    for label, cls in enumerate(CLASS_NAMES):
        n_fit, n_val = (int((train_set.labels[idx] == label).sum()) for idx in (fit_idx, val_idx))
        if not n_fit or not n_val:
            raise DatasetError(
                f"{opts.data / 'train' / cls}: {n_fit + n_val} readable images split into {n_fit} to fit and "
                f"{n_val} to validate (--val-fraction {opts.val_fraction}); both need at least one: use more "
                "images (a larger --limit) or another --val-fraction")
    fit_x, fit_y = train_set.images[fit_idx], train_set.labels[fit_idx]
    val_x, val_y = train_set.images[val_idx], train_set.labels[val_idx]
    spec = InputSpec(part_only=aug.part_only, views=opts.views)
    rims = _rims(train_set.images, test_set.images, aug)
    fit_inputs, val_inputs, test_inputs = fit_x, val_x, test_set.images
    if spec.part_only:
        fit_inputs = _masked(fit_x, [rims["train"][i] for i in fit_idx], spec)
        val_inputs = _masked(val_x, [rims["train"][i] for i in val_idx], spec)
        test_inputs = _masked(test_set.images, rims["test"], spec)
    val_paths = {train_set.paths[i] for i in val_idx}
    val_fingerprint = fingerprint([s for s in train_samples if s.path in val_paths], opts.data, digests)
    teachers = distill.load(opts.teachers, IMAGE_SIZE, train_fingerprint, val_fingerprint,
                            (opts.split_seed, opts.val_fraction, opts.limit))
    log.info("split", extra={"fit": len(fit_idx), "validation": len(val_idx), "test": len(test_set.paths),
                             "test_unique": int(unique.sum())})

    prepare_output(opts)
    resume.record(ckpt, as_run, train_fingerprint)
    (opts.out / "skipped.txt").write_text("".join(f"{p}\t{why}\n" for p, why in skipped))

    model, history = train(opts, fit_x, fit_y, val_inputs, val_y, aug, teachers, fit_inputs,
                           rims["train_table"][fit_idx] if rims else None, spec)
    # From here on this run's model replaces whatever a resumed run had produced before: a
    # bundle left beside this run's metrics, or a failed gate's, would describe another model.
    removed = _remove(opts.out, PRODUCTS)
    if removed:
        log.info("replacing the previous outputs of this run folder", extra={"removed": removed})
    # The float model without optimizer state, for audits and float-vs-int8 comparisons.
    plain = ARCHITECTURES[opts.arch](IMAGE_SIZE)
    plain.set_weights(model.get_weights())
    plain.save(opts.out / FLOAT_MODEL)
    float_val = model.predict(eval_dataset(val_inputs, None, opts.batch_size), verbose=0).ravel()
    float_test = model.predict(eval_dataset(test_inputs, None, opts.batch_size), verbose=0).ravel()
    if not (np.isfinite(float_val).all() and np.isfinite(float_test).all()):
        raise TrainingError("the trained model outputs non-finite probabilities (training diverged); "
                            f"try a lower --learning-rate (now {opts.learning_rate:g}). No bundle written")

    rng = np.random.default_rng(opts.seed)
    cal = fit_inputs[rng.choice(len(fit_x), size=min(opts.calibration_images, len(fit_x)), replace=False)]
    tflite = to_int8_tflite(model, cal)
    val_rims = [rims["train"][i] for i in val_idx] if rims else None
    test_rims = rims["test"] if rims else None
    # The guard's limits come from the clean fit images, as the edge will see them (rims found there).
    guard_limits = None
    if rims:
        try:
            guard_limits = calibrate_guard(fit_x, [rims["train"][i] for i in fit_idx])[0]
        except ValueError as exc:  # e.g. images with no rim the locator finds: no guard, said loudly
            log.warning(f"no guard in this bundle: {exc}")
    guard = Guard(guard_limits) if guard_limits is not None else None
    rule = lineval.choose_views_and_threshold(tflite, spec, guard, val_x, val_y, val_rims, policy,
                                              opts.views or None, test_set.images[0])
    spec = replace(spec, views=rule["views"])
    threshold = rule["threshold"]
    clf = Classifier(tflite, num_threads=os.cpu_count() or 1, spec=spec)
    judge = Judge(clf, threshold, guard)
    int8_val = reject_scores(judge.judge_all(val_x, val_rims))  # what is decided: a guard fault scores 1
    int8_test = reject_scores(judge.judge_all(test_set.images, test_rims))
    int8_model_test = Classifier(tflite, num_threads=os.cpu_count() or 1,
                                 spec=replace(spec, views=1)).predict(test_set.images, test_rims)
    val_names = [f"{train_set.paths[i].parent.name}/{train_set.paths[i].name}" for i in val_idx]
    threshold_evidence = evidence(val_y, int8_val, val_names, threshold)
    log.info("operating threshold and views chosen on line-condition validation", extra={
        "policy": str(policy), "threshold": threshold, "views": spec.views,
        "summed_validation_cost": rule["candidates"][str(spec.views)]["summed_cost"],
        "lowest_validation_defect": (threshold_evidence["lowest_defects"] or [None])[0]})
    line_test = lineval.test_figures(Judge(Classifier(tflite, num_threads=1, spec=spec), threshold, guard),
                                     test_set.images, test_set.labels, test_rims,
                                     policy.value if policy.kind == "cost" else 20.0, opts.second_camera)

    perturb_cfg = PerturbConfig()
    perturbed = perturb_all(test_set.images, opts.robustness_seed, perturb_cfg)
    int8_perturbed = clf.predict(perturbed)

    y = test_set.labels
    focus = {change: {"validation": _brief(summarize(val_y, clf.predict(refocus_all(val_x, change)), threshold)),
                      "test": _brief(summarize(y, clf.predict(refocus_all(test_set.images, change)), threshold))}
             for change in FOCUS_CHANGES}
    metrics: dict[str, Any] = {
        "threshold": threshold,
        "threshold_policy": str(policy),
        "threshold_evidence": threshold_evidence,
        "validation": {"float": summarize(val_y, float_val, threshold),
                       "int8": summarize(val_y, int8_val, threshold)},
        "test_all": {"float": summarize(y, float_test, threshold),
                     "int8": summarize(y, int8_test, threshold),
                     "int8_model_only": summarize(y, int8_model_test, threshold),
                     "float_at_0.5": summarize(y, float_test, 0.5)},
        "test_unique": {"float": summarize(y[unique], float_test[unique], threshold),
                        "int8": summarize(y[unique], int8_test[unique], threshold)},
        "int8_vs_float": {
            "decision_agreement": round(float(np.mean((float_test >= threshold) == (int8_test >= threshold))), 4),
            "max_abs_diff": round(float(np.max(np.abs(float_test - int8_test))), 4),
            "mean_abs_diff": round(float(np.mean(np.abs(float_test - int8_test))), 5),
        },
        "batchnorm_recalibration": opts.extra.get("batchnorm_recalibration"),
        "weight_average": opts.extra.get("weight_average"),
        "robustness": {"perturbation": perturb_cfg.to_dict(), "seed": opts.robustness_seed,
                       "int8": summarize(y, int8_perturbed, threshold)},
        "focus": focus,
        "int8_latency_ms_1_thread": _int8_latency_ms(tflite, test_set.images[0]),
        "judge_latency_ms_1_thread": rule["candidates"][str(spec.views)]["latency_ms_1_thread"],
        "line_rule": rule,
        "line_test": line_test,
        "rim_fallbacks": rims.get("fallbacks") if rims else None,
        "params": model.count_params(),
        "skipped_files": [[str(p), why] for p, why in skipped],
        "train_seconds": round(time.perf_counter() - t_start, 1),
    }
    (opts.out / "metrics.json").write_text(_json_text(metrics, "metrics.json"))

    try:
        # quantisation alone: the float model against the int8 one on the same single view, no guard
        check_int8_accuracy(metrics["test_all"]["float"]["accuracy"],
                            metrics["test_all"]["int8_model_only"]["accuracy"],
                            opts.max_int8_drop)
    except ExportError as exc:
        (opts.out / "rejected.tflite").write_bytes(tflite)
        raise ExportError(f"{exc}: no bundle written; the rejected model is {opts.out / 'rejected.tflite'}") from None

    meta = {
        "image_size": list(IMAGE_SIZE),
        "color": "grayscale",
        "class_names": list(CLASS_NAMES),
        "positive_class": POSITIVE_CLASS,
        "threshold": threshold,
        "threshold_policy": str(policy),
        "decision_rule": "reject when p_defect >= threshold",
        "input": {"dtype": str(clf.input_dtype), "scale": clf.input_scale, "zero_point": clf.input_zero,
                  "meaning": "raw grayscale pixels 0..255",
                  **({"part_only": spec.to_meta()} if spec.part_only else {})},
        "views": spec.views,
        "line_rule": {"views": rule["views"], "threshold": threshold, "rule": rule["rule"],
                      "summed_validation_cost": rule["candidates"][str(spec.views)]["summed_cost"]},
        "output": {"dtype": str(clf.output_dtype), "scale": clf.output_scale, "zero_point": clf.output_zero,
                   "meaning": "p_defect = scale * (q - zero_point)"},
        "architecture": opts.arch,
        "params": model.count_params(),
        "float_model": FLOAT_MODEL,
        "training": {
            "command": opts.command,
            "data": {"root": str(opts.data), "train_fingerprint": train_fingerprint,
                     "test_fingerprint": fingerprint(test_samples, opts.data, digests),
                     "validation_fingerprint": val_fingerprint,
                     "train_images": len(train_set.paths), "test_images": len(test_set.paths),
                     "skipped": len(skipped), "limit_per_class": opts.limit},
            "augmentation": {"name": aug_name, **aug.to_dict()},
            "distillation": {"weight": opts.distill_weight, "teachers": [t.record for t in teachers]}
            if teachers else None,
            "options": _jsonable({k: v for k, v in asdict(opts).items() if k not in ("command", "extra")}),
            "epochs_run": len(history),
            "best_epoch": int(np.argmin([h["val_loss"] for h in history])) + 1 if history else None,
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
        },
        "image_stats": image_stats(fit_x),
        "metrics": {k: metrics[k] for k in ("test_all", "test_unique", "validation", "int8_vs_float",
                                            "robustness", "focus", "int8_latency_ms_1_thread",
                                            "judge_latency_ms_1_thread")},
        **({"guard": guard_limits.to_meta()} if guard_limits is not None else {}),
        SCORES_KEY: score_record(val_y, int8_val),  # what a threshold override is judged on (edge.override)
    }
    _json_text(meta, "model.json")  # a non-finite number here means a diverged model: TrainingError, exit 1
    written = bundle_fmt.write(opts.out, tflite, meta)
    report.write(opts.out, written.meta, metrics, history, train_set, test_set, unique,
                 float_test, int8_test, fit_x, fit_y, val_y, aug, opts, val_images=dict(zip(val_names, val_x)))
    # Validation figures only: a replacement is judged on them before anyone reads test (report.md).
    val_int8 = metrics["validation"]["int8"]
    log.info("bundle written", extra={"out": str(opts.out), "threshold": threshold,
                                      "validation_int8_escapes": val_int8["false_accepts"],
                                      "validation_int8_good_rejected": val_int8["false_rejects"],
                                      "test_figures": str(opts.out / "report.md")})
    return metrics
