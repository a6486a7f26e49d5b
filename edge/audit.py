"""Audit trail: the crop the model judged, next to the decision it produced.

Evidence for every rejected part (and a sample of accepted ones) lets a quality engineer
re-check a reject, feed misjudged parts back into training, and replay exactly what the
model saw: crops are lossless PNGs, so `edge-inspect --replay` on the folder gives the
same p_defect the line published. Writing happens on a worker thread so a slow disk
never delays the gate; the folder is kept under a byte budget, oldest first.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditSettings:
    dir: Path
    sample_accepted: float = 0.0  # fraction of accepted parts saved too, 0..1
    max_bytes: int = 500 * 2**20
    queue_size: int = 256


class AuditTrail:
    """Saves `<part_id>.png` (when there is a crop) and `<part_id>.json` per audited decision."""

    def __init__(self, settings: AuditSettings, seed: int | None = None) -> None:
        self.settings = settings
        self.dir = Path(settings.dir)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # crops are production evidence
        self._rng = random.Random(seed)
        self._queue: queue.Queue[tuple[dict[str, Any], np.ndarray | None] | threading.Event | None] = queue.Queue(
            settings.queue_size)
        self._files: dict[str, int] = {}  # stem -> bytes, oldest first (insertion order)
        self.saved = 0
        self.dropped = 0  # queue full: the disk is not keeping up
        self.evicted = 0
        self.errors = 0
        self._scan()
        self._thread = threading.Thread(target=self._work, name="audit", daemon=True)
        self._thread.start()

    def _scan(self) -> None:
        """Account for what earlier runs left, so the budget holds across restarts."""
        sizes: dict[str, tuple[float, int]] = {}
        for p in self.dir.iterdir():
            if p.suffix in (".png", ".json") and p.is_file():
                st = p.stat()
                mtime, size = sizes.get(p.stem, (st.st_mtime, 0))
                sizes[p.stem] = (min(mtime, st.st_mtime), size + st.st_size)
        for stem, (_mtime, size) in sorted(sizes.items(), key=lambda kv: (kv[1][0], kv[0])):
            self._files[stem] = size
        self._evict()

    @property
    def bytes(self) -> int:
        return sum(self._files.values())

    def wants(self, decision: dict[str, Any]) -> bool:
        if decision.get("decision") != "accept":
            return True
        return self.settings.sample_accepted > 0 and self._rng.random() < self.settings.sample_accepted

    def record(self, decision: dict[str, Any], crop: np.ndarray | None) -> bool:
        """Queue a decision (and its crop) for saving; False when not audited or dropped."""
        if not self.wants(decision):
            return False
        try:
            self._queue.put_nowait((dict(decision), None if crop is None else crop.copy()))
        except queue.Full:
            self.dropped += 1
            log.warning("audit queue full: crop not saved", extra={"part_id": decision.get("part_id")})
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is on disk; False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self._save(*item)
            except OSError as exc:
                self.errors += 1
                log.error("audit write failed", extra={"dir": str(self.dir), "error": repr(exc)})

    def _save(self, decision: dict[str, Any], crop: np.ndarray | None) -> None:
        stem = _safe_stem(str(decision.get("part_id", "part")))
        size = 0
        if crop is not None:
            png = self.dir / f"{stem}.png"
            ok, buf = cv2.imencode(".png", crop)
            if not ok:
                raise OSError(f"PNG encoding failed for {png.name}")
            _write_atomic(png, buf.tobytes())
            size += len(buf)
        meta = json.dumps(decision, sort_keys=True, separators=(",", ":")).encode()
        _write_atomic(self.dir / f"{stem}.json", meta)
        size += len(meta)
        self._files.pop(stem, None)
        self._files[stem] = size
        self.saved += 1
        self._evict()

    def _evict(self) -> None:
        total = self.bytes
        while total > self.settings.max_bytes and len(self._files) > 1:
            stem, size = next(iter(self._files.items()))
            del self._files[stem]
            for suffix in (".png", ".json"):
                (self.dir / f"{stem}{suffix}").unlink(missing_ok=True)
            total -= size
            self.evicted += 1


def _safe_stem(part_id: str) -> str:
    """Part ids come from the PLC: keep them readable but never a path."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in part_id).lstrip(".")
    return cleaned[:120] or "part"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write-then-rename (a crash never leaves half a file), private to the service user."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
