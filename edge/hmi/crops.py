"""Finding a decision's crop and evidence JSON in the daemon's audit and collect folders.

The daemon names them `<seq>-<part_id>.png/.json` (edge.ops.audit.evidence_stem); after a
journal was started over, an old file can carry the same seq and part id, so a file counts
only when its JSON has the decision's own `ts`. Paths are built from the index, never from
the request, so no URL can reach outside these folders.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from edge.ops.audit import SEQ_DIGITS, evidence_stem

_NAME = re.compile(rf"^(\d{{{SEQ_DIGITS}}})-.*\.png$")
LISTING_TTL_S = 2.0


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Evidence:
    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = [Path(d) for d in dirs]
        self._listing: dict[int, Path] = {}
        self._listed_at = 0.0
        self._mtimes: tuple[float, ...] = ()
        self._lock = threading.Lock()

    def find(self, seq: int, part_id: str, dts: str | None) -> tuple[Path | None, Path | None]:
        """(png, json) of this decision, either may be None (faults have no crop; accepts are sampled)."""
        stem = evidence_stem(seq, part_id)
        for d in self.dirs:
            for name in [stem, *(f"{stem}~{n}" for n in range(2, 6))]:
                meta = d / f"{name}.json"
                if not meta.is_file():
                    if name == stem:
                        break  # no such file at all in this folder
                    continue
                data = _json(meta)
                if data is not None and dts is not None and data.get("ts") != dts:
                    continue  # evidence of an earlier journal's decision with the same seq
                png = d / f"{name}.png"
                return (png if png.is_file() else None), meta
        return None, None

    def crops(self) -> dict[int, Path]:
        """seq -> crop of every PNG in the folders (the first folder wins: collect before audit),
        re-listed when a folder changed and at most every LISTING_TTL_S."""
        with self._lock:
            now = time.monotonic()
            if now - self._listed_at < LISTING_TTL_S:
                return self._listing
            mtimes = tuple(_mtime(d) for d in self.dirs)
            if mtimes == self._mtimes and self._listing:
                self._listed_at = now
                return self._listing
            out: dict[int, Path] = {}
            for d in reversed(self.dirs):
                try:
                    with os.scandir(d) as it:
                        for e in it:
                            m = _NAME.match(e.name)
                            if m and "~" not in e.name:
                                out[int(m.group(1))] = Path(e.path)
                except OSError:
                    continue
            self._listing, self._listed_at, self._mtimes = out, now, mtimes
            return out


def _mtime(d: Path) -> float:
    try:
        return d.stat().st_mtime
    except OSError:
        return 0.0
