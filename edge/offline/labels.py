"""Labels as data: an inspector's verdict on a collected crop, copied into a labelled folder.

A labelled folder is what `edge-train` and `edge-inspect --replay` read (one subfolder per
class: `def_front/`, `ok_front/`) plus `labels.jsonl`, an append-only manifest with one row
per verdict: the crop's sha256, the label, who gave it and when, and what the line had
decided (decision, p_defect, reason, model). The crop is stored under its sha256, so the
same crop labelled twice is one file; a later verdict on it moves it to its new class and
the manifest keeps both rows (the last one holds). Source crops are never moved or deleted.

`LabelStore.label()` is the one way in, for the CLI (`edge-label`) and the operator page.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.offline.dataset import CLASS_NAMES
from edge.timestamps import iso

MANIFEST = "labels.jsonl"
LABELS = {"defect": 1, "def": 1, "d": 1, "ng": 1, "nok": 1, "bad": 1, "1": 1,
          "ok": 0, "o": 0, "good": 0, "0": 0}  # what an inspector may type; blank = not labelled
SHEET_COLUMNS = ("crop", "label", "line_decision", "p_defect", "reason", "part_id", "model")


class LabelError(ValueError):
    """A verdict that cannot be applied: names the file, line and value."""


@dataclass(frozen=True)
class LabelRecord:
    file: str  # relative to the labelled folder: <class>/<sha256[:16]>.png
    sha256: str
    label: str  # a class folder name (CLASS_NAMES)
    who: str
    when: str
    source: str  # the collected crop it came from
    part_id: str | None = None
    decision: str | None = None  # what the line decided
    p_defect: float | None = None
    reason: str | None = None
    model: str | None = None


def parse_label(value: str, where: str) -> str | None:
    """The class folder for a typed label, None for blank; LabelError naming `where` otherwise."""
    text = value.strip().lower()
    if not text:
        return None
    if text not in LABELS:
        raise LabelError(f"{where}: label {value!r} is not one of {', '.join(sorted(LABELS))} (or blank to skip)")
    return CLASS_NAMES[LABELS[text]]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decision_of(crop: Path) -> dict[str, Any]:
    """The decision JSON saved beside a crop, {} when missing or unreadable (the crop is still labellable)."""
    meta_path = crop.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, ValueError):
        meta = {}
    return meta if isinstance(meta, dict) else {}


def collected(crops: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The crops of a collect (or audit) folder in decision order, each with its decision JSON."""
    for png in sorted(crops.glob("*.png")):
        yield png, decision_of(png)


class LabelStore:
    """One labelled folder and its manifest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifest = self.root / MANIFEST

    def current(self) -> dict[str, LabelRecord]:
        """sha256 -> the verdict that holds (the last one in the manifest)."""
        out: dict[str, LabelRecord] = {}
        if not self.manifest.is_file():
            return out
        with open(self.manifest, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = LabelRecord(**json.loads(line))
                except (ValueError, TypeError) as exc:
                    raise LabelError(f"{self.manifest}:{n}: not a label record ({exc}); the manifest is data: "
                                     "fix or remove that line by hand") from None
                out[row.sha256] = row
        return out

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(CLASS_NAMES, 0)
        for rec in self.current().values():
            counts[rec.label] += 1
        return counts

    def label(self, crop: Path, label: str, who: str, meta: dict[str, Any] | None = None,
              known: dict[str, LabelRecord] | None = None) -> tuple[LabelRecord, str]:
        """Copy `crop` into its class folder and append the verdict; returns it and what happened
        ("added", "relabelled" or "unchanged"). `known`: current(), when labelling many."""
        if label not in CLASS_NAMES:
            raise LabelError(f"{crop}: label {label!r} is not a class ({', '.join(CLASS_NAMES)})")
        if not who.strip():
            raise LabelError("who: a verdict needs the inspector's name (--who)")
        known = self.current() if known is None else known
        digest = sha256_of(crop)
        before = known.get(digest)
        if before is not None and before.label == label:
            return before, "unchanged"
        rel = Path(label) / f"{digest[:16]}{crop.suffix.lower()}"
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(crop, tmp)
        os.replace(tmp, dest)
        if before is not None and (self.root / before.file) != dest:
            (self.root / before.file).unlink(missing_ok=True)
        meta = meta or {}
        p = meta.get("p_defect")
        rec = LabelRecord(file=str(rel), sha256=digest, label=label, who=who.strip(), when=iso(time.time()),
                          source=str(crop), part_id=_str(meta.get("part_id")), decision=_str(meta.get("decision")),
                          p_defect=float(p) if isinstance(p, int | float) and not isinstance(p, bool) else None,
                          reason=_str(meta.get("reason")), model=_str(meta.get("model")))
        with open(self.manifest, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(rec), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        known[digest] = rec
        return rec, "relabelled" if before is not None else "added"


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def write_sheet(crops: Path, out: Path) -> int:
    """A verdict sheet (CSV) listing every collected crop with what the line decided and an
    empty `label` column for the inspector; returns the number of rows."""
    rows = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(SHEET_COLUMNS)
        for png, meta in collected(crops):
            p = meta.get("p_defect")
            w.writerow([png.name, "", meta.get("decision", ""), "" if p is None else p, meta.get("reason", ""),
                        meta.get("part_id", ""), meta.get("model", "")])
            rows += 1
    return rows


def read_sheet(sheet: Path, crops: Path) -> list[tuple[Path, str, dict[str, Any]]]:
    """(crop, class, its decision JSON) for every labelled row; every problem at once, by line."""
    problems: list[str] = []
    out: list[tuple[Path, str, dict[str, Any]]] = []
    try:
        text = sheet.read_text(encoding="utf-8-sig")  # a spreadsheet's "CSV UTF-8" starts with a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{sheet}: cannot read the verdict sheet: {exc}") from None
    lines = text.splitlines()
    # A spreadsheet set to a comma-decimal locale saves "CSV" with semicolons (or tabs).
    head = lines[0] if lines else ""
    delimiter = max((";", "\t", ","), key=lambda d: (head.count(d), d == ","))
    reader = csv.DictReader(lines, delimiter=delimiter)
    missing = [c for c in ("crop", "label") if c not in (reader.fieldnames or [])]
    if missing:
        raise LabelError(f"{sheet}:1: missing column(s) {', '.join(missing)} (made by `edge-label sheet`?)")
    seen: dict[str, int] = {}
    for row in reader:
        n = reader.line_num
        name = (row.get("crop") or "").strip()
        try:
            label = parse_label(row.get("label") or "", f"{sheet}:{n}")
        except LabelError as exc:
            problems.append(str(exc))
            continue
        if label is None:
            continue
        crop = crops / name
        if not name or Path(name).name != name or not crop.is_file():
            problems.append(f"{sheet}:{n}: crop {name!r} is not a file in {crops}")
            continue
        if name in seen:
            problems.append(f"{sheet}:{n}: crop {name} is labelled again (first on line {seen[name]})")
            continue
        seen[name] = n
        out.append((crop, label, decision_of(crop)))
    if problems:
        raise LabelError("\n".join(problems))
    return out
