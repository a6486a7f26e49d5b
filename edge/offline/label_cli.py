"""`edge-label`: turn collected crops into a labelled folder (docs/commissioning.md).

  edge-label sheet CROPS --out verdicts.csv       list the crops, with the line's decision
  edge-label apply CROPS verdicts.csv --out LABELLED --who NAME
                                                  copy each labelled crop into its class folder
  edge-label status LABELLED                      count the labels per class

The inspector fills the sheet's `label` column (defect/ok, d/o, ng/good, 1/0; blank skips
the crop) in any spreadsheet. `apply` checks the whole sheet first and changes nothing when
a line is wrong (each problem is printed with its line). Exit status: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.offline.labels import LabelError, LabelStore, read_sheet, write_sheet


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-label", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sheet", help="write a verdict sheet (CSV) for the crops of a collect or audit folder")
    s.add_argument("crops", type=Path, help="folder written by collect.dir (or audit.dir)")
    s.add_argument("--out", type=Path, required=True, help="the CSV to write (refused if it exists)")
    a = sub.add_parser("apply", help="copy the labelled crops into LABELLED/def_front and LABELLED/ok_front")
    a.add_argument("crops", type=Path, help="the folder the sheet lists")
    a.add_argument("sheet", type=Path, help="the verdict sheet, its label column filled in")
    a.add_argument("--out", type=Path, required=True, help="the labelled folder (created; added to if it exists)")
    a.add_argument("--who", required=True, help="the inspector's name, recorded with each verdict")
    st = sub.add_parser("status", help="labels per class in a labelled folder")
    st.add_argument("labelled", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sheet":
            return _sheet(args.crops, args.out)
        if args.command == "apply":
            return _apply(args.crops, args.sheet, args.out, args.who)
        counts = LabelStore(args.labelled).counts()
        print(f"{args.labelled}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    except LabelError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edge-label: {exc}", file=sys.stderr)
        return 2


def _sheet(crops: Path, out: Path) -> int:
    if not crops.is_dir():
        raise LabelError(f"{crops}: not a folder")
    if out.exists():
        raise LabelError(f"{out}: exists; a filled-in sheet is an inspector's work, choose another --out")
    n = write_sheet(crops, out)
    if n == 0:
        out.unlink()
        raise LabelError(f"{crops}: no crops (*.png) to label")
    print(f"{out}: {n} crops to label (fill the label column: defect or ok)")
    return 0


def _apply(crops: Path, sheet: Path, out: Path, who: str) -> int:
    if not crops.is_dir():
        raise LabelError(f"{crops}: not a folder")
    if not who.strip():
        raise LabelError("--who: give the inspector's name")
    if out.resolve() == crops.resolve() or crops.resolve() in out.resolve().parents:
        raise LabelError(f"--out {out}: inside the crops folder {crops}; the labelled folder must be elsewhere "
                         "(the collect budget would delete its files)")
    verdicts = read_sheet(sheet, crops)  # every problem first: nothing is applied from a bad sheet
    store = LabelStore(out)
    out.mkdir(parents=True, exist_ok=True)
    known = store.current()
    done = {"added": 0, "relabelled": 0, "unchanged": 0}
    for crop, label, meta in verdicts:
        _rec, what = store.label(crop, label, who, meta, known)
        done[what] += 1
    counts = store.counts()
    print(f"{out}: {done['added']} added, {done['relabelled']} relabelled, {done['unchanged']} unchanged; now "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
