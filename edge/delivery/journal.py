"""The decision journal: every decision is on disk before it goes on the wire.

A SQLite file in WAL mode. The inspection thread appends while the MQTT network
thread marks PUBACKs, so one connection is shared under a lock (SQLite serialises
writers anyway, and one connection avoids SQLITE_BUSY between our own threads).

Durability: `synchronous=FULL` by default. In WAL mode NORMAL already survives a
process crash or SIGKILL (committed transactions are in the WAL file); what FULL adds
is survival of *power loss*, which an edge box on a line does suffer. With NORMAL a
power cut could roll back the last appends after they were published: the gate would
have seen a `seq` the journal no longer has, and the next boot would hand that `seq`
to another part. One fsync per decision is cheap at line rates (parts per second),
so FULL is the default; pass synchronous="NORMAL" only on storage where fsync hurts.

Rows: pending -> delivered (PUBACK for /decision) or pending -> late (PUBACK for
/decision/late). `seq` is AUTOINCREMENT, so it never goes back, even after pruning
or a restart.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PENDING, DELIVERED, LATE = "pending", "delivered", "late"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    part_id     TEXT    NOT NULL,
    created_ts  REAL    NOT NULL,
    deadline_ts REAL    NOT NULL,
    state       TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'late')),
    done_ts     REAL,
    payload     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_state_seq ON decisions (state, seq);
CREATE INDEX IF NOT EXISTS decisions_created ON decisions (created_ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Created by the first recipe switch: a line without recipes keeps the journal it always had.
_RECIPE_SCHEMA = """
CREATE TABLE IF NOT EXISTS recipe_switches (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          REAL    NOT NULL,
    recipe      TEXT    NOT NULL,
    previous    TEXT,
    source      TEXT    NOT NULL,
    request_id  TEXT,
    model       TEXT    NOT NULL,
    after_seq   INTEGER NOT NULL
);
"""


class JournalError(RuntimeError):
    """The journal cannot be opened, read or written; the daemon must fail safe.

    `damaged`: the file itself is bad (a restart cannot fix it), not a failed write.
    """

    def __init__(self, message: str, damaged: bool = False) -> None:
        super().__init__(message)
        self.damaged = damaged


def _error(path: Path, what: str, exc: sqlite3.DatabaseError) -> JournalError:
    """A JournalError naming the file; for a damaged file it also says what the operator must do,
    since a restart (systemd's) cannot fix it and a deleted journal would hand out used seqs again."""
    code = getattr(exc, "sqlite_errorname", "")
    todo = ("stop the service and rebuild the file from its readable rows as docs/operations.md "
            "('Journal file corrupt') shows, which keeps seq and every readable undelivered decision; do not just "
            "delete it, seq would start again at 1")
    if code == "SQLITE_NOTADB":
        return JournalError(f"journal {path} is not an SQLite database ({exc}): check journal.path; "
                            f"if it is the journal, it is corrupt: {todo}", damaged=True)
    if code == "SQLITE_CORRUPT":
        return JournalError(f"journal {path} is corrupt ({what}: {exc}): {todo}", damaged=True)
    return JournalError(f"{path}: {what}: {exc}")


@dataclass(frozen=True)
class Row:
    """One journaled decision; `payload` is the exact JSON text that is published."""

    seq: int
    part_id: str
    created_ts: float
    deadline_ts: float
    state: str
    done_ts: float | None
    payload: str

    @property
    def decision(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.payload)
        return out


@dataclass(frozen=True)
class RecipeSwitch:
    """One recipe switch as journaled: the parts decided after `after_seq` are judged under `recipe`
    (continuous mode), or were announced after the request (trigger mode)."""

    id: int
    ts: float
    recipe: str
    previous: str | None
    source: str  # mqtt | opcua | start | reload
    request_id: str | None
    model: str
    after_seq: int

    def to_dict(self) -> dict[str, Any]:
        return {"switch": self.id, "ts": self.ts, "recipe": self.recipe, "previous": self.previous,
                "source": self.source, "request_id": self.request_id, "model": self.model,
                "after_seq": self.after_seq}


@dataclass(frozen=True)
class PruneResult:
    removed_done: int
    removed_pending: int


class Journal:
    """Thread-safe, crash-safe decision journal with bounded size.

    retention_days: delivered/late rows older than this are deleted; a *pending* row
    older than this is deleted too, with an ERROR log (it has been undeliverable for
    that long, and keeping it forever would make the file unbounded).
    max_rows: above this, the oldest delivered/late rows go first; only if pending
    rows alone exceed it are the oldest pending rows dropped, again with an ERROR log
    and counted in counts()["dropped_undelivered"].
    """

    def __init__(self, path: str | Path, retention_days: float | None = 30.0, max_rows: int | None = 1_000_000,
                 *, synchronous: Literal["FULL", "NORMAL"] = "FULL", prune_every: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        if retention_days is not None and retention_days <= 0:
            raise ValueError(f"retention_days must be > 0, got {retention_days}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.prune_every = max(1, prune_every)
        self._clock = clock
        self._lock = threading.RLock()
        self._appends_since_prune = 0
        self._create_private(self.path)
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        except sqlite3.DatabaseError as exc:
            raise _error(self.path, "cannot open journal", exc) from exc
        self._closed = False
        try:
            with self._named_errors("cannot open journal"):
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise JournalError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
                self._db.execute(f"PRAGMA synchronous={synchronous}")
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            c = self.counts()
            log.info("journal opened", extra={"path": str(self.path), "synchronous": synchronous, **c,
                                              "last_seq": self.last_seq})
            self.prune()
        except BaseException:
            self._db.close()  # a refused journal must not keep the file open
            self._closed = True
            raise

    @staticmethod
    def _create_private(path: Path) -> None:
        """Create the file 0600 before SQLite touches it; SQLite gives -wal/-shm the same mode."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                os.fchmod(fd, 0o600)
                log.warning("journal file was readable by others; set to 0600",
                            extra={"path": str(path), "was": oct(mode)})
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists() and stat.S_IMODE(side.stat().st_mode) & 0o077:
                side.chmod(0o600)

    # -- writes ----------------------------------------------------------------------
    def append(self, decision: Mapping[str, Any], deadline_ts: float) -> int:
        """Journal a decision (durably) and return its seq; call before publishing."""
        return self.append_row(decision, deadline_ts).seq

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT, rolled back on any error; SQLite errors become a
        JournalError that names the file and what was being done. Call with _lock held."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (disk full) may have ended it already
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise _error(self.path, what, exc) from exc

    @contextmanager
    def _named_errors(self, what: str) -> Iterator[None]:
        """SQLite errors outside a transaction (reads) become a JournalError naming the file: a damaged
        file must stop the daemon with one clear line, not a traceback from some thread."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise _error(self.path, what, exc) from exc

    def append_row(self, decision: Mapping[str, Any], deadline_ts: float) -> Row:
        """Like append(), returning the whole row so the caller publishes exactly `payload`."""
        return self.append_rows([(decision, deadline_ts)])[0]

    def append_rows(self, items: Sequence[tuple[Mapping[str, Any], float]]) -> list[Row]:
        """Journal several decisions in one transaction (one fsync): how an overloaded daemon
        answers a backlog of triggers within their deadlines. All or none are journaled."""
        for decision, _deadline in items:
            part_id = decision.get("part_id")
            if not isinstance(part_id, str) or not part_id:
                raise ValueError("a decision needs a non-empty string part_id")
        if not items:
            return []
        now = self._clock()
        rows = []
        first = items[0][0]["part_id"]
        what = f"cannot append decision for part {first!r}" + (f" and {len(items) - 1} more" if len(items) > 1 else "")
        with self._lock:
            self._check_open()
            with self._transaction(what):
                for decision, deadline_ts in items:
                    part_id = decision["part_id"]
                    body = {k: v for k, v in decision.items() if k != "seq"}
                    cur = self._db.execute(
                        "INSERT INTO decisions (part_id, created_ts, deadline_ts, payload) VALUES (?, ?, ?, '')",
                        (part_id, now, float(deadline_ts)))
                    seq = int(cur.lastrowid)  # type: ignore[arg-type]
                    payload = json.dumps({"seq": seq, **body}, separators=(",", ":"), allow_nan=False,
                                         ensure_ascii=False)
                    self._db.execute("UPDATE decisions SET payload = ? WHERE seq = ?", (payload, seq))
                    rows.append(Row(seq, part_id, now, float(deadline_ts), PENDING, None, payload))
            self._appends_since_prune += len(rows)
            if self._appends_since_prune >= self.prune_every:
                self.prune()
        return rows

    def mark_delivered(self, seq: int) -> bool:
        """PUBACK for /decision: True if the row moved from pending to delivered."""
        return self._finish(seq, DELIVERED)

    def mark_late(self, seq: int) -> bool:
        """PUBACK for /decision/late: True if the row moved from pending to late."""
        return self._finish(seq, LATE)

    def finish_many(self, items: Sequence[tuple[int, str]]) -> int:
        """Mark several rows delivered/late in one transaction (one fsync, not one per PUBACK);
        returns how many moved from pending. All or none are marked."""
        if any(state not in (DELIVERED, LATE) for _seq, state in items):
            raise ValueError("finish_many: states are 'delivered' or 'late'")
        if not items:
            return 0
        changed = 0
        with self._lock:
            self._check_open()
            with self._transaction(f"cannot mark {len(items)} rows delivered/late (first seq {items[0][0]})"):
                for seq, state in items:
                    cur = self._db.execute(
                        "UPDATE decisions SET state = ?, done_ts = ? WHERE seq = ? AND state = 'pending'",
                        (state, self._clock(), seq))
                    changed += cur.rowcount
        return changed

    def _finish(self, seq: int, state: str) -> bool:
        with self._lock:
            self._check_open()
            with self._named_errors(f"cannot mark seq {seq} {state}"):
                cur = self._db.execute(
                    "UPDATE decisions SET state = ?, done_ts = ? WHERE seq = ? AND state = 'pending'",
                    (state, self._clock(), seq))
            changed = cur.rowcount == 1
        if not changed:
            log.debug("journal row not pending; mark ignored", extra={"seq": seq, "state": state})
        return changed

    def record_recipe(self, recipe: str, previous: str | None, source: str, model: str,
                      request_id: str | None = None) -> RecipeSwitch:
        """Journal a recipe switch (durably, before it takes effect); `after_seq` is the last decision before it."""
        with self._lock:
            self._check_open()
            now = self._clock()
            with self._transaction(f"cannot record the switch to recipe {recipe!r}"):
                self._db.execute(_RECIPE_SCHEMA)
                after = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'decisions'").fetchone()
                after_seq = int(after[0]) if after else 0
                cur = self._db.execute(
                    "INSERT INTO recipe_switches (ts, recipe, previous, source, request_id, model, after_seq) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (now, recipe, previous, source, request_id, model, after_seq))
            return RecipeSwitch(int(cur.lastrowid or 0), now, recipe, previous, source, request_id, model, after_seq)

    def recipe_switches(self, limit: int = 100) -> list[RecipeSwitch]:
        """The newest `limit` switches, oldest first."""
        with self._lock, self._named_errors("cannot read the recipe switches"):
            self._check_open()
            if not self._has_recipes():
                return []
            rows = self._db.execute(
                "SELECT id, ts, recipe, previous, source, request_id, model, after_seq FROM recipe_switches "
                "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [RecipeSwitch(*r) for r in reversed(rows)]

    def _has_recipes(self) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recipe_switches'"
                                ).fetchone() is not None

    def prune(self) -> PruneResult:
        """Apply retention; delivered/late rows go first, pending ones only with an ERROR log."""
        with self._lock:
            self._check_open()
            self._appends_since_prune = 0
            removed_done = removed_pending = 0
            dropped: list[tuple[int, str]] = []
            with self._transaction("prune failed"):
                if self.retention_days is not None:
                    cutoff = self._clock() - self.retention_days * 86400.0
                    removed_done += self._db.execute(
                        "DELETE FROM decisions WHERE state != 'pending' AND created_ts < ?", (cutoff,)).rowcount
                    dropped += self._db.execute(
                        "SELECT seq, part_id FROM decisions WHERE state = 'pending' AND created_ts < ? "
                        "ORDER BY seq", (cutoff,)).fetchall()
                    self._db.execute("DELETE FROM decisions WHERE state = 'pending' AND created_ts < ?", (cutoff,))
                    # The newest switch stays whatever its age: it names the recipe a restart resumes.
                    if self._has_recipes():
                        self._db.execute("DELETE FROM recipe_switches WHERE ts < ? AND id < "
                                         "(SELECT MAX(id) FROM recipe_switches)", (cutoff,))
                if self.max_rows is not None:
                    over = self._db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] - self.max_rows
                    if over > 0:
                        removed_done += self._db.execute(
                            "DELETE FROM decisions WHERE seq IN (SELECT seq FROM decisions "
                            "WHERE state != 'pending' ORDER BY seq LIMIT ?)", (over,)).rowcount
                        over = self._db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] - self.max_rows
                    if over > 0:
                        rows = self._db.execute("SELECT seq, part_id FROM decisions WHERE state = 'pending' "
                                                "ORDER BY seq LIMIT ?", (over,)).fetchall()
                        self._db.executemany("DELETE FROM decisions WHERE seq = ?", [(r[0],) for r in rows])
                        dropped += rows
                removed_pending = len(dropped)
                if removed_pending:
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('dropped_undelivered', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value", (removed_pending,))
        if removed_pending:
            log.error("journal retention dropped UNDELIVERED decisions (never sent to the gate nor reported late)",
                      extra={"count": removed_pending, "first_seq": dropped[0][0], "last_seq": dropped[-1][0],
                             "part_ids": ",".join(p for _, p in dropped[:10]) + (",..." if len(dropped) > 10 else ""),
                             "retention_days": self.retention_days, "max_rows": self.max_rows})
        if removed_done:
            log.info("journal pruned", extra={"removed": removed_done})
        return PruneResult(removed_done, removed_pending)

    # -- reads -----------------------------------------------------------------------
    def undelivered(self, limit: int | None = None, after_seq: int = 0) -> list[Row]:
        """Pending rows in seq order (paged with after_seq/limit so a big backlog stays out of memory)."""
        with self._lock, self._named_errors("cannot read undelivered decisions"):
            self._check_open()
            cur = self._db.execute(
                "SELECT seq, part_id, created_ts, deadline_ts, state, done_ts, payload FROM decisions "
                "WHERE state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, -1 if limit is None else limit))
            return [Row(*r) for r in cur.fetchall()]

    def get(self, seq: int) -> Row | None:
        with self._lock, self._named_errors(f"cannot read seq {seq}"):
            self._check_open()
            r = self._db.execute("SELECT seq, part_id, created_ts, deadline_ts, state, done_ts, payload "
                                 "FROM decisions WHERE seq = ?", (seq,)).fetchone()
        return Row(*r) if r else None

    def is_pending(self, seq: int) -> bool:
        with self._lock, self._named_errors(f"cannot read seq {seq}"):
            self._check_open()
            r = self._db.execute("SELECT 1 FROM decisions WHERE seq = ? AND state = 'pending'", (seq,)).fetchone()
        return r is not None

    def counts(self) -> dict[str, int]:
        """total, pending, delivered, late (rows present) and dropped_undelivered (ever)."""
        with self._lock, self._named_errors("cannot count decisions"):
            self._check_open()
            by_state = dict(self._db.execute("SELECT state, COUNT(*) FROM decisions GROUP BY state").fetchall())
            dropped = self._db.execute("SELECT value FROM meta WHERE key = 'dropped_undelivered'").fetchone()
        out = {s: int(by_state.get(s, 0)) for s in (PENDING, DELIVERED, LATE)}
        return {"total": sum(out.values()), **out, "dropped_undelivered": int(dropped[0]) if dropped else 0}

    def backlog(self) -> dict[str, Any]:
        """The pending rows in one read: how many, how many already past their deadline
        (`expired`: the publisher reports those on /decision/late, never to the gate), and
        the oldest and newest created_ts (None when there are none). Read before publishing
        starts, it describes what an earlier run left undelivered."""
        with self._lock, self._named_errors("cannot read the undelivered backlog"):
            self._check_open()
            n, expired, oldest, newest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(deadline_ts <= ?), 0), MIN(created_ts), MAX(created_ts) "
                "FROM decisions WHERE state = 'pending'", (self._clock(),)).fetchone()
        return {"pending": int(n), "expired": int(expired), "oldest_ts": oldest, "newest_ts": newest}

    @property
    def last_seq(self) -> int:
        """The highest seq ever assigned (survives pruning and restarts)."""
        with self._lock, self._named_errors("cannot read the last seq"):
            self._check_open()
            r = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'decisions'").fetchone()
        return int(r[0]) if r else 0

    # -- lifecycle -------------------------------------------------------------------
    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise JournalError(f"{self.path}: journal is closed")

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as exc:  # pragma: no cover - the data is in the WAL anyway
                log.warning("journal checkpoint failed", extra={"path": str(self.path), "error": str(exc)})
            self._db.close()
            self._closed = True

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
