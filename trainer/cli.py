"""`edge-train`: thin command line over trainer.fit and trainer.compare.

Exit status of `fit`: 0 bundle written; 1 no bundle: training diverged or the int8 export
failed its accuracy gate; 2 bad usage, data or output folder (message, no traceback).
`compare`: 0 compared; 2 bad usage, bundle or data.
Both: 2 when the trainer's extra (TensorFlow, matplotlib) is not installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trainer
from edge.offline.dataset import default_data_root
from edge.ops import logs
from edge.vision.locate import RIM_FINDERS
from edge.vision.partview import OUTPUTS
from edge.vision.tone import TONES
from trainer.threshold import THRESHOLD_RULES

log = logging.getLogger("edge-train")

# Top-level modules of the `train` extra and what they pull in: one of them missing means
# an edge-only install (pip install -e . without [train]), not a bug to show as a traceback.
TRAIN_EXTRA_MODULES = frozenset({"tensorflow", "keras", "matplotlib", "PIL", "absl"})

# Lines TensorFlow, its converter and LiteRT write straight to file descriptor 2, bypassing
# TF_CPP_MIN_LOG_LEVEL (TF 2.17+ logs through absl before absl::InitializeLog is called).
# Only INFO/WARNING lines and known start-up messages: C++ errors (E, F) always get through.
TF_NOISE = (
    r"[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] "  # absl C++ INFO/WARNING (raw clock)
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] [\w./-]+:\d+\] "  # TF's older C++ INFO/WARNING
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+$"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
    r"|E\d{4} .*\] Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register factory for plugin"
)

_FILTER = """
import re, sys
noise = re.compile(sys.argv[1])
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not noise.match(line.decode("utf-8", "replace")):
        out.write(line)
        out.flush()
"""

# Python warnings that Keras and the TFLite converter give for every run of this trainer,
# each checked harmless here; any other warning is shown.
BENIGN_WARNINGS = (
    # trainer.data shuffles in the tf.data pipeline; model.fit's shuffle=True default is moot
    r"`shuffle=True` was passed, but will be ignored since the data `x` was provided as a tf\.data\.Dataset",
    # a one-input model called with a bare tensor instead of {"image": tensor}
    r"The structure of `inputs` doesn't match the expected structure",
    # the uint8 input quantization comes from the representative data (scale 1, zero point 0, checked)
    r"Statistics for quantized inputs were expected, but not specified; continuing anyway",
)


def missing_extra(exc: ModuleNotFoundError, command: str) -> str | None:
    """The one-line error for a module of the `train` extra that is not installed, else None."""
    name = (exc.name or "").split(".")[0]
    if name not in TRAIN_EXTRA_MODULES:
        return None
    return (f"edge-train {command} needs the trainer's extra: pip install -e '.[train]' in the repository, "
            f"or pip install 'edge-inspect[train]' (missing module: {name})")


@contextmanager
def quiet_tensorflow(verbose: bool) -> Iterator[None]:
    """Keep TensorFlow's start-up and converter noise out of the trainer's stderr.

    Without this a one-minute fit printed 30 lines of TensorFlow, Keras and LiteRT
    chatter among its own. A TF_CPP_MIN_LOG_LEVEL the user set turns the C++ filter
    off (they asked for TensorFlow's log); --verbose keeps the Python loggers and warnings.
    """
    quieter = {} if verbose else {"absl": logging.ERROR, "matplotlib": logging.WARNING}
    before = {name: logging.getLogger(name).level for name in quieter}
    tf_log = logging.getLogger("tensorflow")
    with warnings.catch_warnings():
        try:
            if not verbose:
                for message in BENIGN_WARNINGS:
                    warnings.filterwarnings("ignore", message=message, category=UserWarning)
                for name, level in quieter.items():
                    logging.getLogger(name).setLevel(level)
                # TensorFlow's INFO stays (e.g. "Using MirroredStrategy with devices ..."); the
                # converter's temporary SavedModel does not concern anyone.
                tf_log.addFilter(_drop_saved_model_assets)
            if trainer.TF_LOG_LEVEL_FROM_USER:
                yield
            else:
                with _stderr_filtered(TF_NOISE):
                    yield
        finally:
            tf_log.removeFilter(_drop_saved_model_assets)
            for name, level in before.items():
                logging.getLogger(name).setLevel(level)


def _drop_saved_model_assets(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Assets written to")


@contextmanager
def _stderr_filtered(pattern: str) -> Iterator[None]:
    """File descriptor 2 through a filter process that drops lines matching `pattern`.

    A process, not a thread: what the trainer writes just before a crash (a C++ check
    failure, then abort) still reaches the terminal, as the filter outlives its writer.
    """
    sys.stderr.flush()
    saved = child = None
    try:
        saved = os.dup(2)
        r, w = os.pipe()
        try:
            # Own session: the terminal's Ctrl-C must not kill the filter before the trainer's last words.
            child = subprocess.Popen([sys.executable, "-I", "-c", _FILTER, pattern], stdin=r, stdout=saved,
                                     stderr=saved, start_new_session=True)
            os.dup2(w, 2)
        finally:
            os.close(r)
            os.close(w)
    except OSError as exc:
        log.debug("TensorFlow's log is not filtered", extra={"error": str(exc)})
    try:
        yield
    finally:
        if saved is not None:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        if child is not None:
            try:
                child.wait(5)  # EOF once fd 2 is back, unless a process the trainer started still holds it
            except subprocess.TimeoutExpired:
                log.debug("log filter still running", extra={"pid": child.pid})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="train, evaluate and export an int8 bundle")
    f.add_argument("--data", type=Path, default=None,
                   help="folder with train/ and test/, each with def_front/ and ok_front/ "
                        "(default: $CASTING_DATA or ../shared/datasets/casting_data)")
    f.add_argument("--out", type=Path, required=True, help="run/bundle folder to write")
    f.add_argument("--arch", default="edge",
                   help="edge (default), edge-wide (wider middle stages), edge-wide-stem (edge-wide with a "
                        "32-filter first stage) or seed (the notebook's CNN)")
    f.add_argument("--epochs", type=int, default=25)
    f.add_argument("--steps-per-epoch", type=int, default=150)
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--seed", type=int, default=123,
                   help="seed of the training randomness: weights, batch order, augmentation (default 123)")
    f.add_argument("--split-seed", type=int, default=123,
                   help="seed of the fit/validation split, kept apart from --seed so that runs with "
                        "different seeds are judged on the same validation images (default 123)")
    f.add_argument("--val-fraction", type=float, default=0.2)
    f.add_argument("--learning-rate", type=float, default=1e-3)
    f.add_argument("--threshold-policy", default="cost:20",
                   help="cost:R (a false accept costs R false rejects; default cost:20) or recall:X")
    f.add_argument("--augment", choices=("auto", "notebook", "line", "line-sharpen", "line-crisp", "line-part",
                                         "line-pinhole"),
                   default="auto",
                   help="augmentation set: notebook's, line (adds scale/blur), line-sharpen (line plus an "
                        "unsharp mask up to 1.5), line-crisp (line resampled bicubically, focus jittered both "
                        "ways) or line-part (line-crisp under line conditions, for a part-only model that sees "
                        "nothing beyond the rim), line-pinhole (line-part with synthetic pinholes on 15%% of the "
                        "good images, labelled defect); auto picks notebook for --arch seed, else line-part")
    f.add_argument("--init", type=Path, default=None, metavar="BUNDLE",
                   help="start from this bundle's float weights (same --arch) instead of random ones")
    f.add_argument("--views", default="auto", choices=("auto", "1", "2", "4", "8"),
                   help="test-time rotations/flips averaged in logit space, the threshold chosen with them; "
                        "auto (default): 1, 2, 4 or 8, whichever the line-condition rule prefers on validation "
                        "within the latency budget")
    f.add_argument("--rim-finder", default="half", choices=RIM_FINDERS,
                   help="how each image's rim is found for the part-only mask, in training and in the bundle "
                        "(edge.vision.locate.find_rim_in_crop): half (default; bundles before it) or combined "
                        "(also a full-size search: light belts)")
    f.add_argument("--output", default="logit", choices=OUTPUTS,
                   help="what the int8 model outputs: logit (default since 2026-12-07: the weights without "
                        "the final sigmoid, finely resolved near a low threshold) or p_defect (steps of 1/256, "
                        "the bundles before; trainer.export). Acts after training only, so a --resume may "
                        "change it")
    f.add_argument("--tone", default="none", choices=TONES,
                   help="none (default): the part's grey levels as the camera gives them; match: each part's "
                        "levels inside its rim mapped onto the fit images' (edge.vision.tone), in training and "
                        "in the bundle, so lighting gain and gamma barely move the model input")
    f.add_argument("--second-camera", type=Path, default=None, metavar="DIR",
                   help="labelled folder from another camera to report on (default: casting_512_dark beside "
                        "--data, where it exists)")
    f.add_argument("--limit", type=int, default=None, help="use only the first N images per class and split")
    f.add_argument("--no-recalibrate-bn", dest="recalibrate_bn", action="store_false",
                   help="keep batch norm's moving averages from training instead of exact statistics")
    f.add_argument("--swa-epochs", type=int, default=0,
                   help="after --epochs, train this many more at a constant rate and average their "
                        "weights (stochastic weight averaging; kept only if validation loss is lower)")
    f.add_argument("--swa-learning-rate", type=float, default=2.5e-4,
                   help="constant learning rate of the weight-averaging epochs (default 2.5e-4)")
    f.add_argument("--teacher", dest="teachers", type=Path, action="append", default=[], metavar="BUNDLE",
                   help="distil from this trained bundle (repeat for several; their probabilities are averaged "
                        "in logit space); it must come from the same training data and split (see "
                        "docs/training.md)")
    f.add_argument("--distill-weight", type=float, default=None,
                   help="share of the teachers' probability in each training target, above 0 and at most "
                        "0.5 so the label always keeps the larger say (default 0.5; only with --teacher)")
    f.add_argument("--hard-examples", type=int, default=0, metavar="K",
                   help="show the fit images the --init bundle judges worst K times per pass instead of once: "
                        "defects it scores below 0.5, with at most 2 px of motion blur and no defocus so a "
                        "pit of a few pixels stays visible, and good parts it scores at or above its "
                        "threshold (trainer.hard; needs --init; default 0: off)")
    f.add_argument("--max-int8-drop", type=float, default=0.5,
                   help="fail when int8 test accuracy is this many points below float (default 0.5)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    g.add_argument("--force", action="store_true", help="replace the run already in --out")
    c = sub.add_parser("compare", help="champion vs challenger bundle on their validation images (never test)")
    c.add_argument("champion", type=Path, help="bundle folder in use (e.g. models/casting-cnn)")
    c.add_argument("challenger", type=Path, help="bundle folder that would replace it")
    c.add_argument("--data", type=Path, default=None,
                   help="the folder both were trained on (their validation split is rebuilt), or a new line's "
                        "labelled folder without train/ (edge-label; every image is used) (default: $CASTING_DATA "
                        "or ../shared/datasets/casting_data)")
    c.add_argument("--cost-ratio", type=float, default=20.0,
                   help="cost of an escape in good parts rejected (default 20, as cost:20)")
    c.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the validation images")
    c.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    c.add_argument("--refocus", default=None,
                   help="score every validation image blurred or sharpened alike, e.g. sharpen_0.5")
    c.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    c.add_argument("--line-rule", action="store_true",
                   help="instead: both bundles under the line-condition rule (docs/training.md), each with its "
                        "threshold chosen again over plain + 14 line-condition validation sets")
    a = sub.add_parser("adapt", help="fine-tune a bundle on a new line's labelled images (docs/commissioning.md)")
    a.add_argument("--base", type=Path, required=True, help="bundle made by edge-train fit (needs its model.keras)")
    a.add_argument("--data", type=Path, required=True, help="the new line's labelled folder (edge-label)")
    a.add_argument("--out", type=Path, required=True, help="folder for the adapted bundle and its report")
    a.add_argument("--original", type=Path, default=None,
                   help="the base's training data, mixed in and its validation reported (default: $CASTING_DATA "
                        "or ../shared/datasets/casting_data)")
    a.add_argument("--per-class", type=int, default=40, help="new-line images per class to adapt on; the rest "
                   "is held out for the report (default 40)")
    a.add_argument("--folds", type=int, default=4, help="folds of the out-of-fold threshold scores (default 4)")
    a.add_argument("--epochs", type=int, default=4)
    a.add_argument("--steps-per-epoch", type=int, default=40)
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--learning-rate", type=float, default=1e-4)
    a.add_argument("--mix", type=float, default=3.0, help="original fit images per adaptation image (default 3)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--original-limit", type=int, default=None, help="first N images per class of --original "
                   "(quick runs; the base's validation split is then not the one it was judged on)")
    a.add_argument("--max-int8-drop", type=float, default=0.5)
    a.add_argument("--threshold-rule", default=THRESHOLD_RULES[0], metavar="|".join(THRESHOLD_RULES),
                   help="keep-old-line (default): the policy on the new line's out-of-fold scores among the "
                        "thresholds that keep the base's escapes and errors on the original validation; union: "
                        "the policy on both sets together; margin:D: keep-old-line's threshold lowered by D in "
                        "logit space (docs/commissioning.md)")
    a.add_argument("--keep-base", type=float, default=0.0, metavar="W",
                   help="the base's own fit images mixed in learn (1 - W) x label + W x the base's opinion "
                        "(0 to 0.5; default 0: labels alone), so the old line is not forgotten")
    a.add_argument("--interpolate", default="1", metavar="ALPHA|auto",
                   help="the fine-tune's share of the weights, the rest the base's (WiSE-FT; default 1: the "
                        "fine-tune alone); auto: the largest of 1, 0.75, 0.5, 0.25 whose bundle keeps the old "
                        "line's bar and passes the int8 gate (docs/commissioning.md)")
    a.add_argument("--force", action="store_true", help="write into a non-empty --out")
    scores_help = ("record a bundle's validation scores in its model.json (what a threshold override is judged "
                   "on; fit records them itself)")
    s = sub.add_parser("scores", help=scores_help, description=scores_help[0].upper() + scores_help[1:] + ".")
    s.add_argument("bundle", type=Path, help="bundle folder made by edge-train fit")
    s.add_argument("--data", type=Path, default=None,
                   help="the folder it was trained on (default: $CASTING_DATA or ../shared/datasets/casting_data)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def scores_main(args: argparse.Namespace) -> int:
    """`edge-train scores`: needs no TensorFlow."""
    from trainer.scores import ScoresError, record  # noqa: PLC0415

    try:
        rec = record(args.bundle, args.data or default_data_root())
    except ScoresError as exc:
        log.error(str(exc))
        return 2
    print(f"{args.bundle}: validation scores recorded ({len(rec['defect'])} defects, "  # noqa: T201
          f"{len(rec['ok'])} good)")
    return 0


def compare_main(args: argparse.Namespace) -> int:
    """`edge-train compare`: needs no TensorFlow."""
    from edge.inference.bundle import BundleError  # noqa: PLC0415
    from edge.offline.dataset import DatasetError  # noqa: PLC0415
    from trainer.compare import (  # noqa: PLC0415
        CompareError,
        compare,
        line_rule,
        render,
        render_line_rule,
    )
    from trainer.threshold import PolicyError  # noqa: PLC0415

    if args.resamples < 1 or not (math.isfinite(args.cost_ratio) and args.cost_ratio > 0):
        log.error(f"--resamples must be >= 1 and --cost-ratio finite and > 0, got {args.resamples} "
                  f"and {args.cost_ratio}")
        return 2
    if args.json is not None and (not args.json.parent.is_dir() or args.json.is_dir()):
        log.error(f"--json {args.json}: needs an existing folder to write the file in (checked before the "
                  "comparison runs)")
        return 2
    try:
        if args.line_rule:
            result = line_rule(args.champion, args.challenger, args.data or default_data_root(), args.cost_ratio)
        else:
            result = compare(args.champion, args.challenger, args.data or default_data_root(), args.cost_ratio,
                             args.resamples, args.seed, args.refocus)
    except (BundleError, DatasetError, CompareError, PolicyError) as exc:
        log.error(str(exc))
        return 2
    print(render_line_rule(result) if args.line_rule else render(result))  # noqa: T201 - the command's output
    if args.json:
        try:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            log.error(f"--json {args.json}: cannot write ({exc.strerror or exc}); the comparison is printed above")
            return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)  # --help needs no TensorFlow
    logs.setup(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.command == "compare":
            return compare_main(args)
        if args.command == "scores":
            return scores_main(args)
        with quiet_tensorflow(args.verbose):
            if args.command == "adapt":
                return adapt_main(args, argv)
            return fit_main(args, argv)
    except ModuleNotFoundError as exc:
        message = missing_extra(exc, args.command)
        if message is None:
            raise
        log.error(message)
        return 2


def adapt_main(args: argparse.Namespace, argv: list[str]) -> int:
    """`edge-train adapt`; errors the user can fix exit 2 with one line."""
    import keras  # noqa: PLC0415

    from edge.inference.bundle import BundleError  # noqa: PLC0415
    from edge.offline.dataset import DatasetError  # noqa: PLC0415
    from trainer.adapt import AdaptOptions, run  # noqa: PLC0415
    from trainer.export import ExportError  # noqa: PLC0415
    from trainer.loop import TrainingError  # noqa: PLC0415
    from trainer.options import OutputError  # noqa: PLC0415
    from trainer.threshold import PolicyError  # noqa: PLC0415

    if not args.verbose:
        keras.config.disable_interactive_logging()
    for name, value in (("--per-class", args.per_class), ("--epochs", args.epochs),
                        ("--steps-per-epoch", args.steps_per_epoch), ("--batch-size", args.batch_size)):
        if value < 1:
            log.error(f"{name} must be at least 1, got {value}")
            return 2
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0) or not (math.isfinite(args.mix)
                                                                                  and args.mix >= 0):
        log.error(f"--learning-rate must be finite and > 0 and --mix finite and >= 0, got {args.learning_rate} "
                  f"and {args.mix}")
        return 2
    opts = AdaptOptions(base=args.base, data=args.data, out=args.out, original=args.original or default_data_root(),
                        per_class=args.per_class, folds=args.folds, epochs=args.epochs,
                        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                        learning_rate=args.learning_rate, mix=args.mix, seed=args.seed,
                        original_limit=args.original_limit, max_int8_drop=args.max_int8_drop,
                        threshold_rule=args.threshold_rule, keep_base=args.keep_base,
                        interpolate=args.interpolate, force=args.force,
                        command="edge-train " + " ".join(argv))
    try:
        result = run(opts)
    except (DatasetError, OutputError, BundleError, PolicyError) as exc:
        log.error(str(exc))
        return 2
    except (TrainingError, ExportError) as exc:
        log.error(str(exc))
        return 1
    held = result["figures"]["adapted"]["held_out"]
    print(f"{args.out}: adapted bundle {result['id']}, threshold {result['threshold']:.6g}; held-out new line: "
          f"accuracy {100 * held['accuracy']:.2f}%, {held['false_accepts']} defects accepted; promotion checks "
          f"{sum(c['met'] for c in result['figures']['checks'])} of {len(result['figures']['checks'])} met "
          "(report.md)")
    return 0


def fit_main(args: argparse.Namespace, argv: list[str]) -> int:
    """`edge-train fit`; TensorFlow is imported first, so an edge-only install is told at once."""
    import keras  # noqa: PLC0415

    from edge.offline.dataset import DatasetError  # noqa: PLC0415
    from trainer.export import ExportError  # noqa: PLC0415 - imports TensorFlow
    from trainer.fit import FitOptions, OutputError, TrainingError, run  # noqa: PLC0415
    from trainer.resume import ResumeMismatch  # noqa: PLC0415
    from trainer.threshold import PolicyError  # noqa: PLC0415

    if not args.verbose:
        keras.config.disable_interactive_logging()  # the converter's model export printed 30 lines of endpoints
    for name, value in (("--epochs", args.epochs), ("--steps-per-epoch", args.steps_per_epoch),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            log.error(f"{name} must be at least 1, got {value}")
            return 2
    if args.swa_epochs < 0 or not (math.isfinite(args.swa_learning_rate) and args.swa_learning_rate > 0):
        log.error(f"--swa-epochs must be >= 0 and --swa-learning-rate finite and > 0, got {args.swa_epochs} "
                  f"and {args.swa_learning_rate}")
        return 2
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        log.error(f"--learning-rate must be finite and > 0, got {args.learning_rate}")
        return 2
    if not (math.isfinite(args.max_int8_drop) and args.max_int8_drop >= 0):
        log.error(f"--max-int8-drop must be finite and >= 0 (accuracy points), got {args.max_int8_drop}")
        return 2
    if not 0 < args.val_fraction < 1:
        log.error(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
        return 2
    if args.distill_weight is not None and not args.teachers:
        # It would be ignored, yet recorded in the bundle and enforced on --resume.
        log.error(f"--distill-weight without --teacher: there is no teacher to weigh; add --teacher BUNDLE "
                  f"or drop --distill-weight {args.distill_weight}")
        return 2
    if args.distill_weight is None:
        args.distill_weight = 0.5  # recorded for runs without teachers too, as in every existing record
    if not 0 < args.distill_weight <= 0.5:
        log.error(f"--distill-weight must be above 0 and at most 0.5, got {args.distill_weight}")
        return 2
    if args.hard_examples < 0:
        log.error(f"--hard-examples must be 0 (off) or at least 1, got {args.hard_examples}")
        return 2
    if args.limit is not None and args.limit < 2:
        log.error(f"--limit must be at least 2, got {args.limit}")
        return 2

    data = args.data or default_data_root()
    second = args.second_camera
    if second is None and (data.parent / "casting_512_dark").is_dir():
        second = data.parent / "casting_512_dark"
    elif second is not None and not second.is_dir():
        log.error(f"--second-camera {second}: not a folder")
        return 2
    opts = FitOptions(
        data=data, out=args.out, arch=args.arch, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size, seed=args.seed, split_seed=args.split_seed,
        val_fraction=args.val_fraction,
        learning_rate=args.learning_rate, threshold_policy=args.threshold_policy, augment=args.augment,
        resume=args.resume, force=args.force, limit=args.limit, max_int8_drop=args.max_int8_drop,
        recalibrate_bn=args.recalibrate_bn, swa_epochs=args.swa_epochs, swa_learning_rate=args.swa_learning_rate,
        teachers=args.teachers, distill_weight=args.distill_weight, init=args.init, rim_finder=args.rim_finder,
        views=0 if args.views == 'auto' else int(args.views), output=args.output, tone=args.tone,
        second_camera=second, hard_examples=args.hard_examples,
        command=shlex.join(["edge-train", *argv]),
    )
    try:
        run(opts)
    except (DatasetError, OutputError, PolicyError, ResumeMismatch) as exc:
        log.error(str(exc))
        return 2
    except ExportError as exc:
        log.error(f"export failed: {exc}")
        return 1
    except TrainingError as exc:
        log.error(f"training failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log.error(f"interrupted: continue with the same command plus --resume (out: {args.out})")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
