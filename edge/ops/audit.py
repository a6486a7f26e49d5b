"""Audit trail: the crop the model judged, next to the decision it produced.

Evidence for every rejected part (and a sample of accepted ones) lets a quality engineer
re-check a reject, feed misjudged parts back into training, and replay exactly what the
model saw: crops are lossless PNGs, so `edge-inspect --replay` on the folder gives the
same p_defect the line published. Writing happens on a worker thread so a slow disk
never delays the gate; the folder is kept under a disk budget, oldest first, measured
in the blocks the files take (the audit folder usually shares its disk with the journal).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.ops.worker import Worker

log = logging.getLogger(__name__)

BLOCK = 4096  # the allocation unit assumed where the file system reports no blocks
SEQ_DIGITS = 12  # zero-padded journal seq: names sort in decision order for ~10^12 decisions
SUFFIXES = (".png", ".json")


@dataclass(frozen=True)
class AuditSettings:
    dir: Path
    sample_accepted: float = 0.0  # fraction of accepted parts saved too, 0..1
    max_bytes: int = 500 * 2**20
    queue_size: int = 256
    sample_rejected: float = 1.0  # fraction of rejected and faulted parts saved: evidence keeps every one
    crops_only: bool = False  # only decisions with a crop (a folder for labelling: a decision alone teaches nothing)
    name: str = "audit"  # in log lines: this trail's config section (audit, collect)


class AuditTrail:
    """Saves `<seq>-<part_id>.png` (when there is a crop) and `<seq>-<part_id>.json` per audited decision.

    The journal's seq makes each name unique (part ids from the PLC repeat after a restart,
    and two ids can clean up to the same file name) and sorts the folder in decision order.
    """

    def __init__(self, settings: AuditSettings, seed: int | None = None) -> None:
        self.settings = settings
        self.dir = Path(settings.dir)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # crops are production evidence
        self._rng = random.Random(seed)
        self._files: dict[str, int] = {}  # name -> bytes on disk, oldest first (insertion order)
        self._bytes = 0  # sum of _files, kept so a status read never iterates the worker's dict
        self.saved = 0
        self.dropped = 0  # queue full: the disk is not keeping up
        self.evicted = 0
        self.errors = 0
        self._scan()
        self._worker = Worker(settings.name, self._handle, settings.queue_size)

    def _scan(self) -> None:
        """Account for what earlier runs left, so the budget holds across restarts.

        `.tmp` files are writes a crash or power cut interrupted: no name refers to them
        and nothing else would ever delete them.
        """
        sizes: dict[str, tuple[float, int]] = {}
        stray = 0
        for p in self.dir.iterdir():
            if not p.is_file():
                continue
            if p.suffix == ".tmp":
                p.unlink(missing_ok=True)
                stray += 1
            elif p.suffix in SUFFIXES:
                st = p.stat()
                mtime, size = sizes.get(p.stem, (st.st_mtime, 0))
                sizes[p.stem] = (min(mtime, st.st_mtime), size + _on_disk(st))
        if stray:
            log.warning(f"removed unfinished {self.settings.name} writes", extra={"dir": str(self.dir), "files": stray})
        for name, (_mtime, size) in sorted(sizes.items(), key=lambda kv: (kv[1][0], kv[0])):
            self._files[name] = size
            self._bytes += size
        self._evict()

    @property
    def bytes(self) -> int:
        """Disk space the audit files take, as the budget counts it."""
        return self._bytes

    def stats(self) -> dict[str, int]:
        """Counters for the daemon's status and the metrics: a failing audit must be seen."""
        return {"saved": self.saved, "errors": self.errors, "dropped": self.dropped, "evicted": self.evicted,
                "files": len(self._files), "bytes": self._bytes}

    def wants(self, decision: dict[str, Any], has_crop: bool = True) -> bool:
        if self.settings.crops_only and not has_crop:
            return False
        rate = self.settings.sample_accepted if decision.get("decision") == "accept" else self.settings.sample_rejected
        return rate >= 1 or (rate > 0 and self._rng.random() < rate)

    def record(self, decision: dict[str, Any], crop: np.ndarray | None) -> bool:
        """Queue a decision (and its crop) for saving; False when not audited or dropped."""
        if not self.wants(decision, crop is not None):
            return False
        if not self._worker.offer((dict(decision), None if crop is None else crop.copy())):
            self.dropped += 1
            log.warning(f"{self.settings.name} queue full: crop not saved", extra={"part_id": decision.get("part_id")})
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is on disk; False on timeout."""
        return self._worker.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._worker.close(timeout)

    def _handle(self, item: tuple[dict[str, Any], np.ndarray | None]) -> None:
        try:
            self._save(*item)
        except OSError as exc:
            self.errors += 1
            log.error(f"{self.settings.name} write failed", extra={"dir": str(self.dir), "error": repr(exc)})

    def _name(self, decision: dict[str, Any]) -> str:
        """`<seq>-<part_id>`, never the name of evidence already on disk."""
        base = evidence_stem(decision.get("seq"), str(decision.get("part_id", "part")))
        name, n = base, 1
        # A journal started over (deleted by hand) hands out old seqs again: add a counter, never overwrite.
        while name in self._files or any((self.dir / f"{name}{s}").exists() for s in SUFFIXES):
            n += 1
            name = f"{base}~{n}"
        return name

    def _save(self, decision: dict[str, Any], crop: np.ndarray | None) -> None:
        name = self._name(decision)
        written: list[Path] = []
        try:
            if crop is not None:
                png = self.dir / f"{name}.png"
                ok, buf = cv2.imencode(".png", crop)
                if not ok:
                    raise OSError(f"PNG encoding failed for {png.name}")
                _write_atomic(png, buf.tobytes())
                written.append(png)
            meta = json.dumps(decision, sort_keys=True, separators=(",", ":")).encode()
            _write_atomic(self.dir / f"{name}.json", meta)
            written.append(self.dir / f"{name}.json")
            size = sum(_on_disk(p.stat()) for p in written)
        except OSError:
            for p in written:  # a crop without its decision is no evidence, and no budget counts it
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)
            raise
        self._files[name] = size
        self._bytes += size
        self.saved += 1
        self._evict()

    def _evict(self) -> None:
        while self._bytes > self.settings.max_bytes and len(self._files) > 1:
            name, size = next(iter(self._files.items()))
            del self._files[name]
            for suffix in SUFFIXES:
                (self.dir / f"{name}{suffix}").unlink(missing_ok=True)
            self._bytes -= size
            self.evicted += 1


def _on_disk(st: os.stat_result) -> int:
    """Bytes a file takes on disk: a 200-byte JSON still costs a whole block (and an inode).

    The larger of the blocks allocated and the length rounded up to BLOCK: a just-written
    file may not have its blocks yet, and some file systems report none.
    """
    rounded = -(-st.st_size // BLOCK) * BLOCK or BLOCK
    return max(getattr(st, "st_blocks", 0) * 512, rounded)


def evidence_stem(seq: object, part_id: str) -> str:
    """`<seq>-<part_id>`, the name (without suffix) a decision's files get; the operator page finds them by it."""
    stem = _safe_stem(part_id)
    return f"{seq:0{SEQ_DIGITS}d}-{stem}" if isinstance(seq, int) and not isinstance(seq, bool) else stem


def _safe_stem(part_id: str) -> str:
    """Part ids come from the PLC: keep them readable but never a path."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in part_id).lstrip(".")
    return cleaned[:120] or "part"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write-then-rename (a crash never leaves half a file), private to the service user.

    A failed write (disk full) removes its `.tmp`: left behind, it would take space no budget counts.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide why the write failed
            tmp.unlink(missing_ok=True)
        raise
