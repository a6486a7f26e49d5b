"""Replay figures drawn with OpenCV, so the edge needs no plotting library.

OpenCV's Hershey fonts draw ASCII only, and its Python binding crashes the process on a
string holding a lone surrogate (a file name that is not UTF-8), so every text goes
through `_ascii` and every file is written as bytes from Python.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.offline.replay import ReplayRun, Result, misclassified_order, printable

FONT = cv2.FONT_HERSHEY_SIMPLEX
MAX_TILES = 50  # a sheet stays readable; the sheet says how many it leaves out


def _ascii(text: str) -> str:
    """Drawable text: undecodable name bytes as \\xNN, other non-ASCII characters as '?'."""
    return printable(text).encode("ascii", "replace").decode("ascii")


def _put(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int],
         thickness: int) -> None:
    cv2.putText(img, _ascii(text), org, FONT, scale, colour, thickness, cv2.LINE_AA)


def _write_png(path: Path, img: np.ndarray) -> None:
    """Encode in memory and write from Python: cv2.imwrite takes no undecodable path."""
    ok, enc = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"cannot encode {printable(str(path))}")
    path.write_bytes(enc.tobytes())


def confusion_png(cm: list[list[int]], title: str, warnings: list[str] | None = None) -> np.ndarray:
    """The confusion matrix; each replay warning in red below it, so a figure passed on carries them."""
    cell, left, top = 160, 170, 90
    lines = [chunk for w in warnings or [] for chunk in _wrap(f"WARNING: {w}", 72)]
    bottom = top + 2 * cell + 20
    img = np.full((bottom + 22 * len(lines) + (10 if lines else 0), left + 2 * cell + 20 + 200, 3), 255, np.uint8)
    _put(img, title, (10, 28), 0.6, (0, 0, 0), 1)
    for k, line in enumerate(lines):
        _put(img, line, (10, bottom + 18 + 22 * k), 0.5, (0, 0, 200), 1)
    for j, name in enumerate(("accept", "reject")):
        _put(img, f"pred {name}", (left + j * cell + 20, top - 12), 0.55, (0, 0, 0), 1)
    peak = max(max(row) for row in cm) or 1
    for i, name in enumerate(("ok", "defect")):
        _put(img, f"actual {name}", (8, top + i * cell + cell // 2), 0.55, (0, 0, 0), 1)
        for j in range(2):
            v = cm[i][j]
            shade = int(255 - 180 * v / peak)
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(img, (x0, y0), (x0 + cell - 4, y0 + cell - 4), (255, shade, shade), -1)
            colour = (0, 0, 200) if i != j and v else (0, 0, 0)
            _put(img, str(v), (x0 + 50, y0 + cell // 2 + 10), 1.0, colour, 2)
    return img


def _wrap(text: str, width: int) -> list[str]:
    words, lines = text.split(), [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + 1 + len(word) > width:
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".strip()
    return lines


def grid_png(tiles: list[tuple[np.ndarray, str, str]], cols: int = 5, tile: int = 200,
             header: str = "") -> np.ndarray:
    """Tiles with two caption lines each, under an optional one-line header."""
    head = 30 if header else 0
    rows = max(1, -(-len(tiles) // cols))
    img = np.full((head + rows * (tile + 44), cols * tile, 3), 255, np.uint8)
    if header:
        _put(img, header, (6, 21), 0.55, (0, 0, 0), 1)
    for k, (gray, line1, line2) in enumerate(tiles):
        r, c = divmod(k, cols)
        x0, y0 = c * tile, head + r * (tile + 44)
        img[y0 : y0 + tile, x0 : x0 + tile] = cv2.cvtColor(cv2.resize(gray, (tile, tile)), cv2.COLOR_GRAY2BGR)
        _put(img, _ascii(line1)[:30], (x0 + 3, y0 + tile + 16), 0.4, (0, 0, 0), 1)
        _put(img, line2, (x0 + 3, y0 + tile + 34), 0.45, (0, 0, 200), 1)
    return img


def write(folder: Path, run: ReplayRun) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    m = run.summary.get("metrics")
    if m:
        p = folder / "confusion.png"
        _write_png(p, confusion_png(m["confusion"], f"threshold {run.summary['threshold']:.8g}, n={m['n']}",
                                    run.summary.get("warnings")))
        written.append(p)
    wrong = [r for r in misclassified_order(run.results) if r.path in run.images]
    if wrong:
        shown = wrong[:MAX_TILES]
        tiles = [(run.images[r.path], Path(r.path).name,
                  f"{r.label} p={r.p_defect:.3f} -> {r.decision}" if r.reason in (None, "model")
                  else f"{r.label} -> {r.reason}") for r in shown]
        p = folder / "misclassified.png"
        _write_png(p, grid_png(tiles, header=sheet_header(len(shown), wrong)))
        written.append(p)
    return written


def sheet_header(shown: int, wrong: list[Result]) -> str:
    """'showing 50 of 260 misclassified; escapes first (escapes 3, guard faults 10, false rejects 247)'."""
    escapes = sum(r.label == "def_front" for r in wrong)
    faults = sum(r.label != "def_front" and (r.reason or "").startswith("fault:") for r in wrong)
    counts = f"escapes {escapes}, guard faults {faults}, false rejects {len(wrong) - escapes - faults}"
    return f"showing {shown} of {len(wrong)} misclassified; escapes first ({counts})"
