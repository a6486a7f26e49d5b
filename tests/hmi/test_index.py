"""The page's index of a real journal: read-only, following appends, prunes and a journal
started over; the gallery's filters; yield per local hour and per shift (night shifts over
midnight, daylight-saving days)."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from edge.delivery.journal import Journal
from edge.hmi.config import Shift
from edge.hmi.index import JournalIndex, reader
from edge.hmi.queries import GalleryFilter, gallery, quarter_counts, reasons, recent
from edge.hmi.yields import hourly, per_shift, shift_of

REASONS = ["model", "model", "fault:occluded", "fault:no_part"]


def _fill(journal: Journal, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        r = REASONS[i % 4] if i % 5 else None  # every fifth part accepted
        journal.append({"part_id": f"P{i}", "ts": f"t{i}", "decision": "accept" if r is None else "reject",
                        "reason": r or "model", "p_defect": 0.5, "model": "m"}, time.time() + 60)


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 60.0
        return self.t


T0 = datetime(2026, 3, 2, 0, 0, tzinfo=ZoneInfo("UTC")).timestamp()


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal.sqlite", retention_days=None, max_rows=None, clock=_Clock(T0))
    yield j
    j.close()


def test_the_index_follows_the_journal_and_cannot_write_it(journal: Journal, tmp_path: Path) -> None:
    _fill(journal, 20)
    idx = JournalIndex(journal.path, tmp_path / "state")
    res = idx.sync(keep=3)
    assert res.added == 20 and [r["seq"] for r in res.newest] == [18, 19, 20]
    _fill(journal, 5, 20)
    assert idx.sync().added == 5 and idx.sync().added == 0
    db = reader(idx.path)
    assert [r["seq"] for r in recent(db, 3)] == [25, 24, 23]
    assert [(r["kind"], r["reason"]) for r in recent(db, 3)] == [("reject", "model"), ("fault", "fault:no_part"),
                                                                 ("fault", "fault:occluded")]
    db.close()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        idx._db.execute("DELETE FROM j.decisions")  # the journal is attached read-only
    assert journal.counts()["total"] == 25
    idx.close()


def test_a_journal_started_over_rebuilds_the_index(journal: Journal, tmp_path: Path) -> None:
    _fill(journal, 10)
    idx = JournalIndex(journal.path, tmp_path / "state")
    idx.sync()
    journal.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(journal.path) + suffix).unlink(missing_ok=True)
    fresh = Journal(journal.path, retention_days=None, max_rows=None)
    _fill(fresh, 3)
    assert idx.sync().added == 3  # a new file: the index starts over with it
    db = reader(idx.path)
    assert [r["part_id"] for r in recent(db, 10)] == ["P2", "P1", "P0"]
    db.close()
    fresh.close()
    idx.close()


def test_the_gallery_filters_by_kind_reason_time_and_pages(journal: Journal, tmp_path: Path) -> None:
    _fill(journal, 40)
    idx = JournalIndex(journal.path, tmp_path / "state")
    idx.sync()
    db = reader(idx.path)
    rows = gallery(db, GalleryFilter(limit=500))
    assert len(rows) == 32 and all(r["kind"] != "accept" for r in rows)
    assert [r["seq"] for r in rows] == sorted((r["seq"] for r in rows), reverse=True)
    assert {r["reason"] for r in gallery(db, GalleryFilter(kind="fault", limit=500))} == {"fault:occluded",
                                                                                           "fault:no_part"}
    assert {r["kind"] for r in gallery(db, GalleryFilter(kind="reject", limit=500))} == {"reject"}
    no_part = gallery(db, GalleryFilter(reason="fault:no_part", limit=500))
    assert len(no_part) == 8 and {r["reason"] for r in no_part} == {"fault:no_part"}
    since, until = T0 + 10 * 60, T0 + 20 * 60  # seq k was journaled at T0 + 60 k
    in_range = gallery(db, GalleryFilter(since=since, until=until, limit=500))
    assert {r["seq"] for r in in_range} == {s for s in range(10, 20) if (s - 1) % 5}
    page1 = gallery(db, GalleryFilter(limit=10))
    page2 = gallery(db, GalleryFilter(limit=10, before_seq=page1[-1]["seq"]))
    assert page2[0]["seq"] < page1[-1]["seq"] and not {r["seq"] for r in page1} & {r["seq"] for r in page2}
    assert reasons(db) == ["fault:no_part", "fault:occluded", "model"]
    db.close()
    idx.close()


def test_yield_counts_by_quarter_add_up_and_follow_a_prune(tmp_path: Path) -> None:
    clock = _Clock(T0)
    j = Journal(tmp_path / "journal.sqlite", retention_days=None, max_rows=30, clock=clock, prune_every=1)
    _fill(j, 20)
    idx = JournalIndex(j.path, tmp_path / "state")
    idx.sync()
    db = reader(idx.path)
    counts = quarter_counts(db, T0, T0 + 86400)
    assert sum(map(sum, counts.values())) == 20
    assert [sum(c[k] for c in counts.values()) for k in range(3)] == [4, 8, 8]
    _fill(j, 20, 20)  # max_rows 30: the journal drops its 10 oldest
    idx._last_prune = 0.0
    idx.sync()
    counts = quarter_counts(db, T0, T0 + 86400)
    assert sum(map(sum, counts.values())) == 30 == len(gallery(db, GalleryFilter(limit=500))) + 6
    db.close()
    j.close()
    idx.close()


SHIFTS = (Shift(name="early", start="06:00"), Shift(name="late", start="14:00"), Shift(name="night", start="22:00"))


def test_a_night_shift_owns_the_small_hours_after_midnight() -> None:
    tz = ZoneInfo("Europe/Berlin")
    start, s = shift_of(datetime(2026, 6, 3, 2, 30, tzinfo=tz), SHIFTS)
    assert (s.name, start.day, start.hour) == ("night", 2, 22)
    start, s = shift_of(datetime(2026, 6, 3, 13, 59, tzinfo=tz), SHIFTS)
    assert (s.name, start.day, start.hour) == ("early", 3, 6)


def test_hours_and_shifts_on_a_daylight_saving_day() -> None:
    tz = ZoneInfo("Europe/Berlin")
    since = datetime(2026, 10, 24, 22, 0, tzinfo=tz).timestamp()  # the night before clocks go back
    until = datetime(2026, 10, 25, 6, 0, tzinfo=tz).timestamp()
    counts = {q: [1, 0, 0] for q in range(int(since // 900), int(until // 900))}  # one part a quarter hour
    hours = hourly(counts, since, until, tz)
    assert len(hours) == 9  # 22:00 to 06:00 local is nine hours that night
    assert [b.label for b in hours].count("02:00") == 2 and all(b.counts[0] == 4 for b in hours)
    shifts = per_shift(counts, since, until, tz, SHIFTS)
    assert [(b.label, b.total) for b in shifts] == [("Sat 24.10 night", 36)]
