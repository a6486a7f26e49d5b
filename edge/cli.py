"""`edge-inspect`: the line's command.

  edge-inspect [--config FILE] [--duration S]   run the inspection daemon
               [--collect DIR]                 ... saving every judged crop for labelling
  edge-inspect --check-config FILE              validate a config, list every problem
  edge-inspect --replay DIR                     validate a bundle offline on images
  edge-inspect --shadow-summary FILE            what a shadow candidate would have decided
  edge-inspect --promote BUNDLE [--recipe NAME] [--reload PID|UNIT]   put a candidate live, the old one kept
  edge-inspect --rollback [--recipe NAME] [--reload PID|UNIT]         swap back

Exit status: 0 ran (replay: bad files are listed, not fatal); 2 usage error, invalid
config, a setting unusable on this box (camera file missing, folder that cannot be created,
unreadable password or TLS file), unusable bundle, or a replay folder with no images;
1 the daemon failed at start for another reason (or --reload could not reach it); 3 replay:
accuracy below --min-accuracy. --promote/--rollback: 2 when refused, and then nothing changed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from edge.delivery.journal import JournalError
from edge.inference.bundle import DEFAULT_BUNDLE, BundleError
from edge.inference.bundle import load as load_bundle
from edge.offline.dataset import DatasetError
from edge.ops import logs

log = logging.getLogger("edge-inspect")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("config.yaml"), metavar="FILE",
                   help="daemon configuration (default: ./config.yaml)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop the daemon after S seconds (demos, tests)")
    p.add_argument("--check-config", type=Path, metavar="FILE",
                   help="validate FILE and what it points at (bundle loads, camera file, journal and audit "
                        "folders writable, password and TLS files readable), list every problem, exit 2 if any")
    p.add_argument("--quiet", action="store_true", help="do not print one line per decision")
    p.add_argument("--collect", type=Path, metavar="DIR",
                   help="daemon: also save every judged part's crop and decision to DIR for labelling "
                        "(collect.dir in the config; edge-label turns them into a labelled folder)")
    p.add_argument("--shadow-summary", type=Path, metavar="FILE",
                   help="summarise a shadow record (model.shadow_record): the live x candidate table and "
                        "every part they disagree on")
    p.add_argument("--promote", type=Path, metavar="BUNDLE",
                   help="install BUNDLE in model.bundle's folder (of --config), the old one kept for --rollback")
    p.add_argument("--rollback", action="store_true",
                   help="swap model.bundle's folder (of --config) with the bundle it replaced")
    p.add_argument("--recipe", metavar="NAME",
                   help="with --promote/--rollback on a config with recipes: the recipe whose bundle is swapped")
    p.add_argument("--reload", metavar="PID|UNIT",
                   help="with --promote/--rollback: then ask the running daemon to reload (SIGHUP to PID, or "
                        "`systemctl reload UNIT`)")
    p.add_argument("--replay", type=Path, metavar="DIR",
                   help="score every image under DIR (labelled by def_front/ok_front or defect/ok "
                        "subfolders, or unlabelled) and print a summary")
    p.add_argument("--model", type=Path, default=None, metavar="BUNDLE",
                   help=f"bundle folder (default: the shipped {DEFAULT_BUNDLE.name})")
    p.add_argument("--threshold", type=float, default=None,
                   help="override the bundle's threshold (reject when p_defect >= threshold)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write per-image results and the summary as JSON")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write per-image results as CSV")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="write confusion-matrix and misclassified-images PNGs to DIR")
    p.add_argument("--conditions", action="store_true",
                   help="labelled folders: also judge every image under each line condition, on other belts "
                        "and covered (guard), and print the table")
    p.add_argument("--min-accuracy", type=float, default=None, metavar="A",
                   help="labelled folders: exit 3 when accuracy is below A (a fraction, e.g. 0.99); without it "
                        "a replay far below the bundle's recorded accuracy, or with escapes, only warns")
    p.add_argument("--workers", type=int, default=None, help="inference threads (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(logging.DEBUG if args.verbose else logging.WARNING)
    if args.check_config is not None:
        return check_config(args.check_config)
    if args.replay is not None:
        return run_replay(args)
    if args.shadow_summary is not None:
        return shadow_summary(args.shadow_summary)
    if args.promote is not None or args.rollback:
        return promote_or_rollback(args)
    return run_daemon(args)


def check_config(path: Path) -> int:
    """The schema, then what the config points at on this box (edge.preflight), as the daemon checks at start."""
    from edge.config import ConfigError  # noqa: PLC0415
    from edge.preflight import describe, load_checked  # noqa: PLC0415

    loaded: list = []  # each bundle the check loaded, by role: described below, not loaded again
    try:
        load_checked(path, loaded)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 2
    print(f"{path}: ok")
    for line in describe(loaded):
        print(f"  {line}")
    return 0


def _live_bundle(cfg: Any, recipe: str | None) -> Path:
    """The bundle folder --promote/--rollback swaps: model.bundle, or the --recipe's bundle."""
    products = cfg.recipes.products
    if not products:
        if recipe is not None:
            raise ValueError(f"--recipe {recipe}: the config has no recipes (recipes.products is empty)")
        return Path(cfg.model.bundle)
    if recipe is None or recipe not in products:
        given = "" if recipe is None else f" {recipe!r} is not one of them;"
        raise ValueError(f"the config has recipes:{given} name the one to swap with --recipe "
                         f"({', '.join(products)})")
    return Path(products[recipe].bundle)


def promote_or_rollback(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from edge.config import ConfigError, load  # noqa: PLC0415
    from edge.inference.promote import PromoteError, previous_of, promote, rollback  # noqa: PLC0415

    if args.promote is not None and args.rollback:
        print("--promote and --rollback: one at a time", file=sys.stderr)
        return 2
    try:
        live = _live_bundle(load(args.config), args.recipe)
        swap = promote(live, args.promote) if args.promote is not None else rollback(live)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except (PromoteError, OSError, ValueError) as exc:
        print(f"{'--promote' if args.promote is not None else '--rollback'}: {exc}; nothing changed", file=sys.stderr)
        return 2
    print(f"{live}: now {swap.installed}" + (f"; {swap.kept} kept in {previous_of(live)}" if swap.kept else ""))
    for unmet in swap.unmet:
        print(f"warning: {swap.installed}'s own report: not met: {unmet}", file=sys.stderr)
    if args.reload is None:
        print("the running daemon switches on reload: systemctl reload edge-inspect (or kill -HUP its PID)")
        return 0
    try:
        if args.reload.isdigit():
            os.kill(int(args.reload), signal.SIGHUP)
        else:
            subprocess.run(["systemctl", "reload", args.reload], check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"--reload {args.reload}: {exc}; the bundle is installed, reload the daemon by hand", file=sys.stderr)
        return 1
    print(f"reload requested ({args.reload}); the daemon self-checks {swap.installed} and logs the switch")
    return 0


def shadow_summary(path: Path) -> int:
    from edge.inference.shadow import summarize  # noqa: PLC0415

    try:
        s = summarize(path)
    except OSError as exc:
        print(f"{path}: cannot read the shadow record: {exc.strerror or exc}", file=sys.stderr)
        return 2
    models = ", ".join(f"live {a} / candidate {b}" for a, b in s["models"]) or "none"
    print(f"{path}: {s['parts']} parts ({models})")
    for key, n in s["table"].items():
        print(f"  {key.replace('_', ' ')}: {n}")
    for row in s["disagreements"]:
        live, cand = row["live"], row["shadow"]
        print(f"  part {row['part_id']} seq {row['seq']}: live {live['decision']} (p {live['p_defect']}, "
              f"{live['reason']}), candidate {cand['decision']} (p {cand['p_defect']:.4f}, {cand['reason']})")
    if s["unreadable_lines"]:
        print(f"  {s['unreadable_lines']} unreadable line(s) skipped (cut by a power loss?)")
    return 0


def _print_decision(d: dict) -> None:
    p = "   n/a" if d["p_defect"] is None else f"{d['p_defect']:.4f}"
    recipe = f"  recipe {d['recipe']}" if d.get("recipe") else ""
    print(f"{d['ts']}  part {d['part_id']}  {d['decision'].upper():6s}  p_defect {p}  "
          f"{d['reason']}  {d['latency_ms']} ms{recipe}", flush=True)


def run_daemon(args: argparse.Namespace) -> int:
    from edge import service  # noqa: PLC0415
    from edge.config import ConfigError  # noqa: PLC0415
    from edge.preflight import load_checked  # noqa: PLC0415

    try:
        # The same checks as --check-config, so a config that cannot run stops here with its
        # lines (exit 2), before a broker, camera or journal is touched.
        cfg = load_checked(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error(problem)
        return 2
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else cfg.log_level)
    if args.collect is not None:
        cfg = cfg.model_copy(update={"collect": cfg.collect.model_copy(update={"dir": args.collect.absolute()})})
    try:
        daemon = service.run(cfg, args.duration, on_decision=None if args.quiet else _print_decision,
                             config_path=args.config)
    except (BundleError, DatasetError, service.SettingError) as exc:
        log.error(str(exc))
        return 2
    except service.StartError as exc:
        log.error(str(exc))
        return 1
    except JournalError as exc:
        # No decision goes out that is not journaled: stop, publish `offline`, let the
        # gate reject and systemd restart us once the disk is fixed.
        log.critical(f"journal {'unusable' if exc.damaged else 'write failed'}, stopping: {exc}")
        return 1
    c = daemon.counters
    print(f"stopped: {c.parts} parts, {c.decisions.get('accept', 0)} accepted, "
          f"{c.decisions.get('reject', 0)} rejected, {c.faults} faults", flush=True)
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from edge.offline import replay  # noqa: PLC0415 - keeps --help fast

    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        log.error(f"--threshold must be in (0, 1], got {args.threshold}")
        return 2
    if args.workers is not None and args.workers < 1:
        log.error(f"--workers must be at least 1, got {args.workers}")
        return 2
    if args.min_accuracy is not None and not 0.0 < args.min_accuracy <= 1.0:
        log.error(f"--min-accuracy must be in (0, 1] (a fraction), got {args.min_accuracy}")
        return 2
    try:
        bundle = load_bundle(args.model)
        bar = replay.ProgressBar(enabled=False if args.no_progress else None)
        run = replay.replay(args.replay, bundle, args.threshold, args.workers, progress=bar,
                            keep_images=args.report is not None)
    except (BundleError, DatasetError) as exc:
        log.error(str(exc))
        return 2
    if not run.results:
        log.error(f"{args.replay}: no image files found")
        return 2
    if args.min_accuracy is not None and not run.summary["labelled"]:
        log.error(f"--min-accuracy: {args.replay} is not a labelled folder (def_front/ok_front or defect/ok)")
        return 2
    print(replay.format_summary(run))
    for warning in run.summary["warnings"]:  # also on stderr: a summary on stdout is easily piped away
        log.warning(warning)
    if args.conditions:
        from edge.offline import condition_report  # noqa: PLC0415

        if not run.summary["labelled"]:
            log.error(f"--conditions: {args.replay} is not a labelled folder (def_front/ok_front or defect/ok)")
            return 2
        try:
            run.summary["conditions"] = condition_report.run(args.replay, bundle, args.threshold)
        except DatasetError as exc:
            log.error(str(exc))
            return 2
        print(condition_report.format_text(run.summary["conditions"]))
    try:
        if args.json:
            replay.write_json(args.json, run)
        if args.csv:
            replay.write_csv(args.csv, run)
        if args.report:
            from edge.offline import replay_report  # noqa: PLC0415

            replay_report.write(args.report, run)
    except OSError as exc:
        log.error(f"cannot write output: {exc}")
        return 2
    if args.min_accuracy is not None:
        accuracy = (run.summary.get("metrics") or {}).get("accuracy")
        if accuracy is None or accuracy < args.min_accuracy:
            shown = "unknown (no labelled image scored)" if accuracy is None else f"{accuracy * 100:.2f}%"
            log.error(f"accuracy {shown} is below --min-accuracy {args.min_accuracy * 100:.2f}%")
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
