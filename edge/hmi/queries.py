"""What the pages ask of the index: the newest decisions, the reject gallery with its filters,
the reasons seen, and the counts behind the yield plots. Every query is bounded (LIMIT, or a
GROUP BY over an index) so a page stays quick at the journal's full 1,000,000 rows
(bench/hmi_queries.py measures it)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from edge.hmi.index import ACCEPT, COLUMNS, FAULT, QUARTER_S, REJECT, row_dict

# yield counts are kept per quarter hour (index.quarters): every time zone's offset is a multiple of it
GALLERY_KINDS = {"all": (REJECT, FAULT), "reject": (REJECT,), "fault": (FAULT,)}


@dataclass(frozen=True)
class GalleryFilter:
    kind: str = "all"  # all | reject | fault
    reason: str | None = None
    since: float | None = None  # epoch seconds
    until: float | None = None
    before_seq: int | None = None  # the next page starts below this seq
    limit: int = 48


def recent(db: sqlite3.Connection, n: int = 20) -> list[dict[str, Any]]:
    rows = db.execute(f"SELECT {COLUMNS} FROM parts ORDER BY seq DESC LIMIT ?", (n,)).fetchall()
    return [row_dict(r) for r in rows]


def gallery(db: sqlite3.Connection, f: GalleryFilter) -> list[dict[str, Any]]:
    """Rejected and faulted parts, newest first, filtered; keyset-paged by seq."""
    kinds = GALLERY_KINDS.get(f.kind, GALLERY_KINDS["all"])
    where = ["kind > 0"]
    args: list[Any] = []
    if len(kinds) == 1:
        where.append("kind = ?")
        args.append(kinds[0])
    if f.reason:
        where.append("reason = ?")
        args.append(f.reason)
    if f.since is not None:
        where.append("ts >= ?")
        args.append(f.since)
    if f.until is not None:
        where.append("ts < ?")
        args.append(f.until)
    if f.before_seq is not None:
        where.append("seq < ?")
        args.append(f.before_seq)
    sql = f"SELECT {COLUMNS} FROM parts WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
    return [row_dict(r) for r in db.execute(sql, (*args, max(1, min(f.limit, 500)))).fetchall()]


def reasons(db: sqlite3.Connection, limit: int = 100) -> list[str]:
    """The distinct reasons of rejected and faulted parts, one index seek each (not a scan)."""
    out: list[str] = []
    last = ""
    while len(out) < limit:
        r = db.execute("SELECT MIN(reason) FROM parts WHERE kind > 0 AND reason > ?", (last,)).fetchone()[0]
        if r is None:
            break
        out.append(r)
        last = r
    return out


def quarter_counts(db: sqlite3.Connection, since: float, until: float) -> dict[int, list[int]]:
    """quarter-hour index (epoch // 900) -> [accepted, rejected, faults] for the quarters since..until
    (whole quarters: the plots' buckets are whole hours)."""
    out: dict[int, list[int]] = {}
    for q, kind, n in db.execute("SELECT q, kind, n FROM quarters WHERE q >= ? AND q < ?",
                                 (int(since // QUARTER_S), -int(-until // QUARTER_S))):
        if kind in (ACCEPT, REJECT, FAULT):
            out.setdefault(int(q), [0, 0, 0])[kind] += int(n)
    return out


def recent_faults(db: sqlite3.Connection, n: int = 200) -> dict[str, int]:
    """Faults among the last n parts, by reason: how often the guard (and the rest) refuse to judge."""
    rows = db.execute("SELECT reason, COUNT(*) FROM (SELECT kind, reason FROM parts ORDER BY seq DESC LIMIT ?) "
                      "WHERE kind = ? GROUP BY reason", (n, FAULT)).fetchall()
    return {str(r): int(c) for r, c in rows}


def counts_since(db: sqlite3.Connection, since: float) -> list[int]:
    out = [0, 0, 0]
    for kind, n in db.execute("SELECT kind, COUNT(*) FROM parts WHERE ts >= ? GROUP BY kind", (since,)):
        out[int(kind)] += int(n)
    return out


def get(db: sqlite3.Connection, seq: int) -> dict[str, Any] | None:
    r = db.execute(f"SELECT {COLUMNS} FROM parts WHERE seq = ?", (seq,)).fetchone()
    return row_dict(r) if r else None
