"""The page's own index of the journal: one narrow row per decision, with the indexes the
gallery and the yield plots need, kept in the page's state folder.

The journal is the daemon's and is opened read-only (SQLite URI `mode=ro`, attached to the
index's connection): the page can never change a decision. Its rows hold the published JSON;
filtering a million of them by reason through json_extract on every page view would take
seconds, so new rows are copied here once (in SQLite, batch by batch, by seq), and pruned
when the journal prunes. A journal started over (its seq went back) rebuilds the index.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ACCEPT, REJECT, FAULT = 0, 1, 2  # `kind`: a reject whose reason is fault:* is a fault, not a model verdict
BATCH = 50_000
INDEX_VERSION = 2  # bumped when the tables change: the index is a copy, rebuilt from the journal
PRUNE_EVERY_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS parts (
    seq      INTEGER PRIMARY KEY,
    ts       REAL    NOT NULL,   -- the journal's created_ts (epoch s)
    kind     INTEGER NOT NULL,
    part_id  TEXT    NOT NULL,
    decision TEXT,
    reason   TEXT,
    p_defect REAL,
    model    TEXT,
    dts      TEXT                -- the decision's own `ts` (ISO), which its evidence JSON repeats
);
CREATE INDEX IF NOT EXISTS parts_flagged ON parts (seq) WHERE kind > 0;
CREATE INDEX IF NOT EXISTS parts_reason ON parts (reason, seq) WHERE kind > 0;
CREATE INDEX IF NOT EXISTS parts_ts ON parts (ts, kind);
-- decisions per quarter hour and kind, kept with every sync: the yield plots read a month of a
-- full journal as ~3000 rows instead of grouping a million
CREATE TABLE IF NOT EXISTS quarters (
    q    INTEGER NOT NULL,   -- CAST(ts / 900 AS INTEGER)
    kind INTEGER NOT NULL,
    n    INTEGER NOT NULL,
    PRIMARY KEY (q, kind)
) WITHOUT ROWID;
"""

QUARTER_S = 900
_ROLL_UP = """
INSERT INTO quarters (q, kind, n)
SELECT CAST(ts / 900 AS INTEGER), kind, COUNT(*) FROM parts WHERE seq > ? GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (q, kind) DO UPDATE SET n = n + excluded.n
"""

_COPY = """
INSERT INTO parts (seq, ts, kind, part_id, decision, reason, p_defect, model, dts)
SELECT seq, created_ts,
       CASE WHEN d = 'accept' THEN 0 WHEN r LIKE 'fault:%' THEN 2 ELSE 1 END,
       part_id, d, r, p, m, t
FROM (SELECT seq, created_ts, part_id,
             CASE WHEN json_valid(payload) THEN json_extract(payload, '$.decision') END AS d,
             CASE WHEN json_valid(payload) THEN json_extract(payload, '$.reason') END AS r,
             CASE WHEN json_valid(payload) THEN json_extract(payload, '$.p_defect') END AS p,
             CASE WHEN json_valid(payload) THEN json_extract(payload, '$.model') END AS m,
             CASE WHEN json_valid(payload) THEN json_extract(payload, '$.ts') END AS t
      FROM j.decisions WHERE seq > ? ORDER BY seq LIMIT ?)
"""

COLUMNS = "seq, ts, kind, part_id, decision, reason, p_defect, model, dts"


def row_dict(r: tuple[Any, ...]) -> dict[str, Any]:
    seq, ts, kind, part_id, decision, reason, p, model, dts = r
    return {"seq": seq, "ts": ts, "kind": ("accept", "reject", "fault")[kind], "part_id": part_id,
            "decision": decision, "reason": reason, "p_defect": p, "model": model, "dts": dts}


def journal_uri(path: Path) -> str:
    return f"file:{path.absolute()}?mode=ro"


@dataclass
class SyncResult:
    added: int
    newest: list[dict[str, Any]]  # the last few rows added, oldest first (for the live view)


class JournalIndex:
    """The writer side: one thread calls sync(); readers open their own read-only connections."""

    def __init__(self, journal: Path, state_dir: Path) -> None:
        self.journal = Path(journal)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "index.sqlite"
        self._db = sqlite3.connect(str(self.path), uri=True, isolation_level=None, check_same_thread=False,
                                   timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # the index is rebuilt from the journal if lost
        if self._db.execute("PRAGMA user_version").fetchone()[0] != INDEX_VERSION:  # an older page's index
            self._db.executescript("DROP TABLE IF EXISTS parts; DROP TABLE IF EXISTS quarters;")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={INDEX_VERSION}")
        self._attached = False
        self._ident: tuple[int, int] | None = None  # (device, inode) of the attached journal file
        self._last_prune = 0.0
        self._lock = threading.Lock()
        self.error: str | None = None  # why the journal cannot be read now (shown as health)

    def _attach(self) -> bool:
        try:
            st = self.journal.stat()
            ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        if self._attached and ident == self._ident:
            return True
        if self._attached:  # replaced or deleted under us: an open handle would keep reading the old file
            self._detach()
        if ident is None:
            self.error = f"journal {self.journal} not found (is the daemon running with this journal.path?)"
            return False
        self._ident = ident
        try:
            self._db.execute("ATTACH DATABASE ? AS j", (journal_uri(self.journal),))
            self._db.execute("SELECT 1 FROM j.decisions LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self._detach()
            self.error = f"journal {self.journal}: {exc}"
            return False
        self._attached = True
        return True

    def _detach(self) -> None:
        try:
            self._db.execute("DETACH DATABASE j")
        except sqlite3.DatabaseError:
            pass
        self._attached = False

    def last_seq(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM parts").fetchone()[0])

    def sync(self, keep: int = 20) -> SyncResult:
        """Copy the journal's new rows; returns how many and the newest `keep` of them."""
        with self._lock:
            if not self._attach():
                return SyncResult(0, [])
            try:
                return self._sync(keep)
            except sqlite3.DatabaseError as exc:  # replaced or damaged under us: attach again next time
                self.error = f"journal {self.journal}: {exc}"
                log.warning("journal read failed", extra={"path": str(self.journal), "error": str(exc)})
                self._detach()
                return SyncResult(0, [])

    def _sync(self, keep: int) -> SyncResult:
        db = self._db
        ours = self.last_seq()
        theirs = db.execute("SELECT COALESCE((SELECT seq FROM j.sqlite_sequence WHERE name = 'decisions'), 0)"
                            ).fetchone()[0]
        if theirs < ours:
            log.warning("the journal's seq went back (a new journal file): index rebuilt",
                        extra={"index_last": ours, "journal_last": theirs})
            db.execute("DELETE FROM parts")
            db.execute("DELETE FROM quarters")
            ours = 0
        start, added = ours, 0
        while True:
            db.execute("BEGIN")
            try:
                n = db.execute(_COPY, (ours, BATCH)).rowcount
                db.execute(_ROLL_UP, (ours,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            added += n
            if n < BATCH:
                break
            ours = self.last_seq()
        now = time.monotonic()
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            oldest = db.execute("SELECT MIN(seq) FROM j.decisions").fetchone()[0]
            db.execute("BEGIN")
            gone = db.execute("DELETE FROM parts WHERE seq < ?", (oldest if oldest is not None else start + added + 1,)
                              ).rowcount
            if gone:  # the quarters before the oldest row go; the one it is in is counted again
                first = db.execute("SELECT CAST(MIN(ts) / 900 AS INTEGER) FROM parts").fetchone()[0]
                db.execute("DELETE FROM quarters WHERE q <= ?", (first if first is not None else 2**62,))
                if first is not None:
                    db.execute("INSERT INTO quarters (q, kind, n) SELECT ?, kind, COUNT(*) FROM parts "
                               "WHERE ts >= ? AND ts < ? GROUP BY kind", (first, first * 900, (first + 1) * 900))
            db.execute("COMMIT")
            if gone:
                log.info("index pruned with the journal", extra={"removed": gone})
        self.error = None
        newest = []
        if added:
            rows = db.execute(f"SELECT {COLUMNS} FROM parts WHERE seq > ? ORDER BY seq DESC LIMIT ?",
                              (start, keep)).fetchall()
            newest = [row_dict(r) for r in reversed(rows)]
        if added > keep:
            log.info("journal indexed", extra={"rows": added})
        return SyncResult(added, newest)

    def backlog(self) -> dict[str, Any] | None:
        """The journal's undelivered rows (the daemon's backlog), None when it cannot be read."""
        with self._lock:
            if not self._attach():
                return None
            try:
                n, expired, oldest = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(deadline_ts <= ?), 0), MIN(created_ts) FROM j.decisions "
                    "WHERE state = 'pending'", (time.time(),)).fetchone()
            except sqlite3.DatabaseError as exc:
                self.error = f"journal {self.journal}: {exc}"
                self._detach()
                return None
        return {"pending": int(n), "expired": int(expired), "oldest_ts": oldest}

    def journal_payload(self, seq: int) -> str | None:
        """The exact published JSON of one decision (for its evidence view when no audit file exists)."""
        with self._lock:
            if not self._attach():
                return None
            r = self._db.execute("SELECT payload FROM j.decisions WHERE seq = ?", (seq,)).fetchone()
        return None if r is None else str(r[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to the index for one request (any thread)."""
    return sqlite3.connect(f"file:{path.absolute()}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
