"""Shadow mode: a candidate bundle judges every part beside the live one and never actuates.

The live decision is made, journaled and published first; only then is the crop handed to
the shadow, on its own thread with a bounded queue, so the candidate can neither delay nor
change what the gate is told (a full queue drops the shadow's look, counted). Each part
the shadow judges is one line of the shadow record (JSON lines: the live and the candidate
verdict side by side); disagreements are also published, best effort, on
`{prefix}/shadow`, and counted in the status and the metrics. `summarize()` reads a record
back, so a promotion is decided on the line's own parts (docs/commissioning.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.inspector import Inspector
from edge.ops.worker import Worker
from edge.timestamps import iso

log = logging.getLogger(__name__)

_LIVE_KEYS = ("decision", "p_defect", "reason", "model", "threshold")


class Shadow:
    def __init__(self, inspector: Inspector, record: Path, publish: Callable[[dict[str, Any]], object] | None = None,
                 queue_size: int = 64) -> None:
        self.inspector = inspector
        self.record = Path(record)
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.record, "a", encoding="utf-8")  # noqa: SIM115 - held for the daemon's life
        self._publish = publish
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.last_inference_s: float | None = None
        self._worker = Worker("shadow", self._handle, queue_size)

    @property
    def model_id(self) -> str:
        return self.inspector.model_id

    def submit(self, decision: dict[str, Any], crop: np.ndarray) -> bool:
        """Queue a published decision and its crop for the candidate; never blocks."""
        if not self._worker.offer((dict(decision), crop.copy())):
            self._count("dropped")
            return False
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            c = dict(self._counts)
        return {"model": self.model_id, "judged": c.get("judged", 0), "agree": c.get("agree", 0),
                "disagree": c.get("disagree", 0),
                "live_accept_shadow_reject": c.get("live_accept_shadow_reject", 0),
                "live_reject_shadow_accept": c.get("live_reject_shadow_accept", 0),
                "dropped": c.get("dropped", 0), "errors": c.get("errors", 0)}

    def flush(self, timeout: float = 10.0) -> bool:
        return self._worker.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._worker.close(timeout)
        self._file.close()

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _handle(self, item: tuple[dict[str, Any], np.ndarray]) -> None:
        try:
            self._judge(*item)
        except Exception as exc:  # noqa: BLE001 - the shadow must never take the daemon down
            self._count("errors")
            log.error("shadow judgement failed", extra={"error": repr(exc), "model": self.model_id})

    def _judge(self, live: dict[str, Any], crop: np.ndarray) -> None:
        t0 = time.perf_counter()
        j = self.inspector.judge.judge(crop)
        self.last_inference_s = time.perf_counter() - t0
        agree = j.decision == live.get("decision")
        row = {"seq": live.get("seq"), "part_id": live.get("part_id"), "frame_ts": live.get("frame_ts"),
               "ts": iso(time.time()), "agree": agree,
               "live": {k: live.get(k) for k in _LIVE_KEYS},
               "shadow": {"decision": j.decision, "p_defect": j.p_defect, "reason": j.reason,
                          "model": self.model_id, "threshold": self.inspector.threshold}}
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._count("judged")
        if agree:
            self._count("agree")
            return
        self._count("disagree")
        self._count(f"live_{live.get('decision')}_shadow_{j.decision}")
        log.info("shadow disagrees", extra={"part_id": row["part_id"], "live": live.get("decision"),
                                            "shadow": j.decision, "p_shadow": j.p_defect})
        if self._publish is not None:
            try:
                self._publish(row)
            except Exception as exc:  # noqa: BLE001 - best effort: the record file holds it
                log.warning("shadow disagreement not published", extra={"error": repr(exc)})


def summarize(record: Path) -> dict[str, Any]:
    """The live x candidate table of a shadow record, and its disagreements in part order."""
    table: Counter[tuple[str, str]] = Counter()
    disagreements: list[dict[str, Any]] = []
    models: set[tuple[str, str]] = set()
    bad = 0
    with open(record, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                live, cand = row["live"]["decision"], row["shadow"]["decision"]
            except (ValueError, KeyError, TypeError):
                bad += 1  # a line cut by a power loss: counted, not fatal
                continue
            table[(live, cand)] += 1
            models.add((str(row["live"].get("model")), str(row["shadow"].get("model"))))
            if live != cand:
                disagreements.append(row)
    return {"parts": sum(table.values()), "table": {f"live_{a}_shadow_{b}": n for (a, b), n in sorted(table.items())},
            "disagreements": disagreements, "models": sorted(models), "unreadable_lines": bad}
