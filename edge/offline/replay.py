"""Replay a folder of images through the line's exact preprocessing and int8 model.

Streams files through a small pool of threads, one interpreter each (OpenCV decode and
LiteRT invoke release the GIL), so both cores work and memory stays flat. Bad files
never stop a run: each is recorded with its reason.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge.inference.bundle import Bundle
from edge.inference.judge import Judge
from edge.offline.dataset import (
    CLASS_NAMES,
    Sample,
    is_labelled,
    list_unlabelled,
    scan_labelled,
)
from edge.offline.metrics import summarize
from edge.vision.preprocess import ImageError, load_image

log = logging.getLogger(__name__)

CHUNK = 32  # images per task: amortises the pool's overhead, keeps order cheap
# A labelled replay more than this (a fraction: 5 accuracy points) below the bundle's
# recorded test accuracy is warned about: rather a wrong bundle, folder or camera than
# chance (the shipped bundle on the second camera's casting_512_dark: 3.4 points below).
ACCURACY_MARGIN = 0.05


@dataclass
class Result:
    path: str
    label: str | None
    p_defect: float | None
    decision: str | None
    error: str | None = None
    reason: str | None = None  # "model" or "fault:<what>" (the guard: occluded, unfamiliar)


@dataclass
class ReplayRun:
    results: list[Result]
    summary: dict[str, Any]
    images: dict[str, np.ndarray]  # model inputs of misclassified images, for the report
    outside: list[str] = field(default_factory=list)  # labelled mode: image files with no class folder


def list_folder(folder: Path) -> tuple[list[Sample], bool, list[Path]]:
    """(samples, labelled, image files outside the class folders that are not scored)."""
    if is_labelled(folder):
        samples, outside = scan_labelled(folder, require_both=False)
        return samples, True, outside
    return list_unlabelled(folder), False, []


def printable(text: str) -> str:
    """`text` with undecodable file-name bytes as \\xNN escapes: safe to print or write as UTF-8.

    Paths from the file system carry such bytes as lone surrogates, which a strict UTF-8
    stream refuses (and OpenCV's putText crashes on); valid names pass unchanged.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Scorer:
    """Thread-local classifiers over one bundle file."""

    def __init__(self, bundle: Bundle, threshold: float) -> None:
        self.bundle = bundle
        self.threshold = threshold
        self._local = threading.local()
        self.first = Judge.from_bundle(bundle, threshold)  # fail fast, before any thread starts

    def _judge(self) -> Judge:
        judge = getattr(self._local, "judge", None)
        if judge is None:
            judge = self._local.judge = Judge.from_bundle(self.bundle, self.threshold)
        return judge

    def score(self, chunk: list[Sample], keep: Callable[[Result], bool]) -> list[tuple[Result, np.ndarray | None]]:
        judge = self._judge()
        out = []
        for s in chunk:
            label = None if s.label is None else CLASS_NAMES[s.label]
            try:
                img = load_image(s.path, judge.classifier.image_size)
            except ImageError as exc:
                out.append((Result(str(s.path), label, None, None, str(exc)), None))
                continue
            except Exception as exc:  # a bad file never stops a run; the log keeps the trace
                log.exception("unexpected error decoding image", extra={"path": printable(str(s.path))})
                out.append((Result(str(s.path), label, None, None, f"unexpected {type(exc).__name__}: {exc}"), None))
                continue
            j = judge.judge(img)
            r = Result(str(s.path), label, j.p_defect, j.decision, reason=j.reason)  # exact: what was decided
            out.append((r, img if keep(r) else None))
        return out


def _chunks(samples: list[Sample], n: int) -> Iterator[list[Sample]]:
    for i in range(0, len(samples), n):
        yield samples[i : i + n]


def _misclassified(r: Result) -> bool:
    return r.label is not None and r.decision is not None and (r.decision == "reject") != (r.label == "def_front")


def replay(folder: Path, bundle: Bundle, threshold: float | None = None, workers: int | None = None,
           progress: Callable[[int, int], None] | None = None, keep_images: bool = False) -> ReplayRun:
    samples, labelled, outside = list_folder(folder)
    t = bundle.threshold if threshold is None else threshold
    scorer = _Scorer(bundle, t)
    workers = workers or min(os.cpu_count() or 1, 8)
    keep = _misclassified if keep_images else (lambda r: False)
    results: list[Result] = []
    images: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replay") as pool:
        for chunk_out in pool.map(lambda c: scorer.score(c, keep), _chunks(samples, CHUNK)):
            for r, img in chunk_out:
                results.append(r)
                if img is not None:
                    images[r.path] = img
            if progress:
                progress(len(results), len(samples))
    seconds = time.perf_counter() - t0
    summary = summarize_run(results, bundle, t, folder, labelled, seconds, workers, len(outside))
    return ReplayRun(results, summary, images, [str(p) for p in outside])


def summarize_run(results: list[Result], bundle: Bundle, threshold: float, folder: Path, labelled: bool,
                  seconds: float, workers: int, outside: int = 0) -> dict[str, Any]:
    scored = [r for r in results if r.p_defect is not None]
    errors = [r for r in results if r.error]
    summary: dict[str, Any] = {
        "folder": str(folder),
        "model": str(bundle.path),
        "model_sha256": bundle.sha256,
        "threshold": threshold,
        "labelled": labelled,
        "files": len(results),
        "scored": len(scored),
        "errors": len(errors),
        "accept": sum(r.decision == "accept" for r in scored),
        "reject": sum(r.decision == "reject" for r in scored),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(results) / seconds, 1) if seconds > 0 else None,
        "workers": workers,
    }
    if labelled:
        summary["outside_class_folders"] = outside  # image files not scored: no class folder
    with_label = [r for r in scored if r.label is not None]
    faults: dict[str, int] = {}
    for r in scored:
        if r.reason and r.reason.startswith("fault:"):
            faults[r.reason] = faults.get(r.reason, 0) + 1
    summary["faults"] = faults
    if labelled and with_label:
        y = np.array([CLASS_NAMES.index(r.label) for r in with_label])
        # what was decided: a guard fault is a reject whatever p_defect was
        p = np.array([1.0 if r.decision == "reject" and r.reason != "model" else r.p_defect for r in with_label])
        summary["metrics"] = summarize(y, p, threshold)
    summary["warnings"] = health_warnings(summary, bundle)
    return summary


def recorded_accuracy(bundle: Bundle) -> float | None:
    """The int8 test accuracy the trainer recorded in model.json, if the bundle has it."""
    try:
        value = bundle.meta["metrics"]["test_all"]["int8"]["accuracy"]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def health_warnings(summary: dict[str, Any], bundle: Bundle) -> list[str]:
    """What a labelled replay must not pass over in silence: escapes, and accuracy far below the record.

    A bundle at 50% accuracy used to replay with exit 0 and a table nobody read.
    """
    m = summary.get("metrics")
    if not m:
        return []
    out = []
    escapes, caught = m["confusion"][1]
    if escapes:
        out.append(f"{escapes} defective part(s) accepted (escapes) of {escapes + caught} defects")
    recorded = recorded_accuracy(bundle)
    if recorded is not None and m["accuracy"] is not None and m["accuracy"] < recorded - ACCURACY_MARGIN:
        own = summary["threshold"] == bundle.threshold
        where = "" if own else f" (threshold {summary['threshold']:.8g}, not the bundle's {bundle.threshold:.8g})"
        out.append(f"accuracy {m['accuracy'] * 100:.2f}% on {m['n']} images is {(recorded - m['accuracy']) * 100:.1f} "
                   f"points below the bundle's recorded test accuracy {recorded * 100:.2f}%{where}: wrong bundle, "
                   "wrong folder, or images unlike the training images?")
    return out


def write_json(path: Path, run: ReplayRun) -> None:
    path.write_text(json.dumps({"summary": run.summary, "images": [asdict(r) for r in run.results]}, indent=1))


def write_csv(path: Path, run: ReplayRun) -> None:
    """One row per image; the summary follows as '#' comment lines (read_csv(comment='#')).

    Always valid UTF-8: undecodable name bytes are written as \\xNN (the JSON keeps them exactly).
    """
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "p_defect", "decision", "error", "reason"])
        for r in run.results:
            w.writerow([printable(r.path), r.label or "", "" if r.p_defect is None else repr(r.p_defect),
                        r.decision or "", printable(r.error or ""), r.reason or ""])
        for k, v in run.summary.items():
            f.write(f"# {k}: {json.dumps(v)}\n")


def format_summary(run: ReplayRun) -> str:
    """The printed summary; file-name bytes that are not UTF-8 appear as \\xNN, so it always prints."""
    s = run.summary
    lines = [
        f"replay of {s['folder']} with {s['model']} (sha256 {s['model_sha256'][:12]}, threshold {s['threshold']:.8g})",
        f"  files {s['files']}   scored {s['scored']}   errors {s['errors']}   "
        f"accept {s['accept']}   reject {s['reject']}   {s['images_per_s']} images/s ({s['workers']} threads)",
    ]
    if run.outside:
        lines.append(f"  {len(run.outside)} image file(s) outside the class folders were not scored "
                     f"(no label), e.g. {run.outside[0]}")
    m = s.get("metrics")
    if m:
        (tn, fp), (fn, tp) = m["confusion"]
        lines += [
            "",
            "                   predicted accept   predicted reject",
            f"  actual ok        {tn:>16}   {fp:>16}",
            f"  actual defect    {fn:>16}   {tp:>16}",
            "",
            f"  accuracy {_pct(m['accuracy'])}   defect recall {_pct(m['defect_recall'])}   "
            f"escape rate {_pct(m['escape_rate'])}   precision {_pct(m['precision'])}   F1 {_pct(m['f1'])}",
            f"  defects accepted (escapes): {fn}   good parts rejected: {fp}",
        ]
    if s.get("faults"):
        lines.append("  rejected by the guard (counted as rejects above): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(s["faults"].items())))
    errs = [r for r in run.results if r.error]
    if errs:
        lines += ["", f"  {len(errs)} file(s) could not be inspected:"]
        lines += [f"    {r.path}: {r.error}" for r in errs]
    if s.get("warnings"):
        lines += ["", *(f"  WARNING: {w}" for w in s["warnings"])]
    return printable("\n".join(lines))


def misclassified_order(results: list[Result]) -> list[Result]:
    """Misclassified results, the costliest first: escapes, guard faults on good parts, false rejects.

    Within each kind the file order is kept. A capped sheet in plain file order could
    show 50 false rejects and none of the escapes that matter.
    """
    def kind(r: Result) -> int:
        if r.label == "def_front":
            return 0  # a defect accepted
        return 1 if (r.reason or "").startswith("fault:") else 2
    return sorted((r for r in results if _misclassified(r)), key=kind)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.2f}%"


class ProgressBar:
    """A one-line bar on a terminal; silent when the stream is not a TTY."""

    def __init__(self, stream: TextIO = sys.stderr, enabled: bool | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        width = 30
        fill = int(width * done / total)
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        self.stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} {rate:.0f} img/s")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()
