"""Replay figures drawn with OpenCV, so the edge needs no plotting library.

OpenCV's Hershey fonts draw ASCII only, and its Python binding crashes the process on a
string holding a lone surrogate (a file name that is not UTF-8), so every text goes
through `_ascii` and every file is written as bytes from Python.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.replay import ReplayRun, printable

FONT = cv2.FONT_HERSHEY_SIMPLEX


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


def confusion_png(cm: list[list[int]], title: str) -> np.ndarray:
    cell, left, top = 160, 170, 90
    img = np.full((top + 2 * cell + 20, left + 2 * cell + 20, 3), 255, np.uint8)
    _put(img, title, (10, 28), 0.6, (0, 0, 0), 1)
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


def grid_png(tiles: list[tuple[np.ndarray, str, str]], cols: int = 5, tile: int = 200) -> np.ndarray:
    rows = max(1, -(-len(tiles) // cols))
    img = np.full((rows * (tile + 44), cols * tile, 3), 255, np.uint8)
    for k, (gray, line1, line2) in enumerate(tiles):
        r, c = divmod(k, cols)
        x0, y0 = c * tile, r * (tile + 44)
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
        _write_png(p, confusion_png(m["confusion"], f"threshold {run.summary['threshold']:.8g}, n={m['n']}"))
        written.append(p)
    wrong = [r for r in run.results if r.path in run.images]
    if wrong:
        tiles = [(run.images[r.path], Path(r.path).name, f"{r.label} p={r.p_defect:.3f} -> {r.decision}")
                 for r in wrong[:50]]
        p = folder / "misclassified.png"
        _write_png(p, grid_png(tiles))
        written.append(p)
    return written
