"""The review queue: an inspector's verdict on a saved crop becomes a label.

The queue holds every crop the daemon saved (audit: rejects and sampled accepts; collect:
its sample of all parts) that nobody has reviewed yet, newest first. A verdict goes through
`LabelStore.label()` into the labelled folder that `edge-train adapt` reads (crop under its
sha256, a manifest row naming the inspector and what the line decided) and into the page's
own review log; it never touches the journal or the wire: the line's decision stands.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.hmi.crops import Evidence
from edge.offline.dataset import CLASS_NAMES
from edge.offline.labels import LabelStore, decision_of
from edge.timestamps import iso

VERDICTS = {"defect": CLASS_NAMES[1], "ok": CLASS_NAMES[0], "skip": None}
LOG = "reviews.jsonl"


class ReviewError(ValueError):
    """A verdict that cannot be taken (already reviewed, no crop, unknown verdict)."""


@dataclass(frozen=True)
class Item:
    seq: int
    crop: Path
    decision: dict[str, Any]  # the evidence JSON beside the crop


class ReviewQueue:
    def __init__(self, evidence: Evidence, labels_dir: Path, state_dir: Path) -> None:
        self.evidence = evidence
        self.store = LabelStore(labels_dir)
        self.log = state_dir / LOG
        self._lock = threading.RLock()
        self._reviewed: set[int] | None = None

    def reviewed(self) -> set[int]:
        with self._lock:
            if self._reviewed is None:
                self._reviewed = set()
                if self.log.is_file():
                    for line in self.log.read_text(encoding="utf-8").splitlines():
                        try:
                            self._reviewed.add(int(json.loads(line)["seq"]))
                        except (ValueError, KeyError, TypeError):
                            continue  # a torn last line after a power cut
            return self._reviewed

    def pending(self, limit: int = 50) -> tuple[list[Item], int]:
        """The next items (newest first) and how many are waiting in all."""
        done = self.reviewed()
        seqs = sorted((s for s in self.evidence.crops() if s not in done), reverse=True)
        crops = self.evidence.crops()
        return [Item(s, crops[s], decision_of(crops[s])) for s in seqs[:limit]], len(seqs)

    def judge(self, seq: int, verdict: str, who: str) -> dict[str, Any]:
        """Apply one verdict; returns the review record written to the log."""
        if verdict not in VERDICTS:
            raise ReviewError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        crop = self.evidence.crops().get(seq)
        if crop is None or not crop.is_file():
            raise ReviewError(f"no saved crop for seq {seq} (evicted by the disk budget?)")
        meta = decision_of(crop)
        if meta.get("seq") not in (None, seq):
            raise ReviewError(f"{crop.with_suffix('.json')} belongs to seq {meta.get('seq')}, not {seq}")
        with self._lock:  # one verdict at a time: two inspectors on one crop get one label and one refusal
            if seq in self.reviewed():
                raise ReviewError(f"seq {seq} was already reviewed")
            label = VERDICTS[verdict]
            record: dict[str, Any] = {"seq": seq, "part_id": meta.get("part_id"), "verdict": verdict,
                                      "line_decision": meta.get("decision"), "reason": meta.get("reason"),
                                      "p_defect": meta.get("p_defect"), "who": who, "when": iso(time.time()),
                                      "crop": str(crop)}
            if label is not None:
                rec, what = self.store.label(crop, label, who, meta)
                record.update(label=rec.label, sha256=rec.sha256, labelled=what,
                              agrees=(meta.get("decision") == "reject") == (label == CLASS_NAMES[1]))
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.reviewed().add(seq)
        return record
