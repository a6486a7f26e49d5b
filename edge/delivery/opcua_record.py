"""What became of each journaled decision on the OPC UA handshake, kept across restarts.

The decision itself is in the journal (edge.delivery.journal) before the PLC sees it; this
small SQLite file says, per seq, how its handshake ended: `acked` (the PLC wrote its Seq to
ResultAckSeq), `ack_missed` (withdrawn at its deadline), `expired` (its deadline passed before
it could be presented). A restarted box presents again only rows with no outcome that are
still in time, so a result the PLC acknowledged is never presented twice; one presented but
not acknowledged when the box stopped is presented again with the same Seq (at-least-once,
as on MQTT). Rows journaled before OPC UA was first enabled are never presented.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

OUTCOMES = ("acked", "ack_missed", "expired")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcome (seq INTEGER PRIMARY KEY, part_id TEXT NOT NULL, outcome TEXT NOT NULL,
                                    ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class HandshakeRecord:
    def __init__(self, path: Path, first_seq: int) -> None:
        """`first_seq`: the journal's next seq, recorded once when the file is new."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
        path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('first_seq', ?)", (first_seq,))
        self.first_seq = int(self._db.execute("SELECT value FROM meta WHERE key='first_seq'").fetchone()[0])

    def record(self, seq: int, part_id: str, outcome: str) -> None:
        """Durable before the PLC sees its effect (ResultReady cleared): a crash after it never re-presents."""
        assert outcome in OUTCOMES, outcome
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO outcome VALUES (?, ?, ?, ?)", (seq, part_id, outcome, time.time()))

    def open_seqs(self, last_seq: int, window: int = 10_000) -> list[int]:
        """Journal seqs from first_seq (at most the last `window`) with no outcome yet, oldest first."""
        lo = max(self.first_seq, last_seq - window + 1)
        with self._lock:
            self._db.execute("DELETE FROM outcome WHERE seq < ?", (lo,))  # bounded: older rows are out of reach
            done = {r[0] for r in self._db.execute("SELECT seq FROM outcome WHERE seq >= ?", (lo,))}
        return [s for s in range(lo, last_seq + 1) if s not in done]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT outcome, COUNT(*) FROM outcome GROUP BY outcome").fetchall()
        return {k: 0 for k in OUTCOMES} | {k: int(n) for k, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
