"""`edge-inspect`: the line's command. `--replay DIR` validates a bundle offline.

Exit status of --replay: 0 the run completed (unreadable files are listed, not fatal);
2 usage error, unusable bundle, or a folder with no images.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge import logs
from edge.bundle import DEFAULT_BUNDLE, BundleError
from edge.bundle import load as load_bundle
from edge.dataset import DatasetError

log = logging.getLogger("edge-inspect")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--workers", type=int, default=None, help="inference threads (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(logging.DEBUG if args.verbose else logging.WARNING)
    if args.replay is None:
        build_parser().print_usage(sys.stderr)
        log.error("nothing to do: give --replay DIR")
        return 2
    return run_replay(args)


def run_replay(args: argparse.Namespace) -> int:
    from edge import replay  # noqa: PLC0415 - keeps --help fast

    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        log.error(f"--threshold must be in (0, 1], got {args.threshold}")
        return 2
    if args.workers is not None and args.workers < 1:
        log.error(f"--workers must be at least 1, got {args.workers}")
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
    print(replay.format_summary(run))
    try:
        if args.json:
            replay.write_json(args.json, run)
        if args.csv:
            replay.write_csv(args.csv, run)
        if args.report:
            from edge import replay_report  # noqa: PLC0415

            replay_report.write(args.report, run)
    except OSError as exc:
        log.error(f"cannot write output: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
