"""The decision journal: seq, durability across SIGKILL and reopen, 0600, retention, threads."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from edge.delivery.journal import Journal, JournalError

ROOT = Path(__file__).resolve().parents[2]


def d(part_id: str, **kw: object) -> dict:
    return {"part_id": part_id, "decision": "accept", **kw}


def test_append_assigns_seq_and_stores_exact_payload(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        seqs = [j.append(d(f"p{i}", seq=999), deadline_ts=100.0 + i) for i in range(3)]
        assert seqs == [1, 2, 3]
        rows = j.undelivered()
        assert [r.seq for r in rows] == [1, 2, 3]
        assert rows[0].decision == {"seq": 1, "part_id": "p0", "decision": "accept"}  # caller's seq is ignored
        assert json.loads(rows[2].payload)["seq"] == 3 and rows[2].deadline_ts == 102.0
        assert j.counts() == {"total": 3, "pending": 3, "delivered": 0, "late": 0, "dropped_undelivered": 0}


def test_mark_delivered_and_late_only_from_pending(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        for i in range(4):
            j.append(d(f"p{i}"), 0.0)
        assert j.mark_delivered(1) and j.mark_late(2)
        assert not j.mark_delivered(1) and not j.mark_late(1) and not j.mark_delivered(2)
        assert not j.mark_delivered(99)
        assert j.counts() == {"total": 4, "pending": 2, "delivered": 1, "late": 1, "dropped_undelivered": 0}
        assert [r.seq for r in j.undelivered()] == [3, 4]
        assert [r.seq for r in j.undelivered(limit=1)] == [3]
        assert [r.seq for r in j.undelivered(after_seq=3)] == [4]
        assert j.is_pending(3) and not j.is_pending(1)
        assert j.get(2).state == "late" and j.get(1).done_ts is not None and j.get(42) is None


def test_reopen_keeps_rows_and_seq_continues_even_after_pruning_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as j:
        for i in range(5):
            j.append(d(f"p{i}"), 0.0)
        for s in range(1, 6):
            j.mark_delivered(s)
    with Journal(path, max_rows=1) as j:  # prunes rows 1-4 on open
        assert j.counts()["total"] == 1
        assert j.last_seq == 5
    with sqlite3.connect(path) as db:  # even with every row gone, seq must not restart
        db.execute("DELETE FROM decisions")
    with Journal(path) as j:
        assert j.append(d("next"), 0.0) == 6


def test_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "j.db"
    old = os.umask(0o022)
    try:
        with Journal(path) as j:
            j.append(d("p"), 0.0)
            for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
            mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
            assert mode == "wal"
    finally:
        os.umask(old)


def test_existing_world_readable_file_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, "edge.delivery.journal"), Journal(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "0600" in caplog.text


def test_retention_deletes_done_rows_first_and_logs_dropped_pending(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    now = [1_000_000.0]
    with Journal(tmp_path / "j.db", retention_days=1, max_rows=4, clock=lambda: now[0]) as j:
        for i in range(6):
            j.append(d(f"p{i}"), 0.0)
        for s in (1, 3, 4):
            j.mark_delivered(s)
        r = j.prune()  # 6 rows > 4: the two oldest done rows (1, 3) go, pending 2 stays
        assert (r.removed_done, r.removed_pending) == (2, 0)
        assert [r.seq for r in j.undelivered()] == [2, 5, 6]
        for i in range(3):  # 7 rows, only one of them done: two pending rows must go, loudly
            j.append(d(f"q{i}"), 0.0)
        with caplog.at_level(logging.ERROR, "edge.delivery.journal"):
            r = j.prune()
        assert r.removed_done == 1 and r.removed_pending == 2
        rec = next(r for r in caplog.records if "UNDELIVERED" in r.getMessage())
        ctx = vars(rec)
        assert (ctx["count"], ctx["first_seq"], ctx["last_seq"], ctx["part_ids"]) == (2, 2, 5, "p1,p4")
        assert j.counts()["dropped_undelivered"] == 2 and j.counts()["total"] == 4
        caplog.clear()
        now[0] += 2 * 86400  # everything is now past retention_days
        j.mark_delivered(9)
        with caplog.at_level(logging.ERROR, "edge.delivery.journal"):
            r = j.prune()
        assert r.removed_done == 1 and r.removed_pending == 3 and j.counts()["total"] == 0
        assert j.counts()["dropped_undelivered"] == 5 and "UNDELIVERED" in caplog.text


def test_concurrent_appends_and_marks(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db", synchronous="NORMAL") as j:
        seqs: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(k: int) -> None:
            for i in range(100):
                s = j.append(d(f"w{k}-{i}"), 0.0)
                with lock:
                    seqs.append(s)

        def marker() -> None:  # the "network thread" acknowledging as it goes
            while not stop.is_set():
                for row in j.undelivered(limit=50):
                    j.mark_delivered(row.seq)
                stop.wait(0.005)

        m = threading.Thread(target=marker)
        m.start()
        writers = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        m.join()
        for row in j.undelivered():
            j.mark_delivered(row.seq)
        assert sorted(seqs) == list(range(1, 401))
        assert j.counts() == {"total": 400, "pending": 0, "delivered": 400, "late": 0, "dropped_undelivered": 0}


def test_every_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from edge.delivery.journal import Journal
        j = Journal({str(path)!r})
        i = 0
        while True:
            i += 1
            seq = j.append({{"part_id": f"p{{i}}", "decision": "reject"}}, 0.0)
            if i % 3 == 0:
                j.mark_delivered(seq)
            print(seq, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    printed = []
    for line in proc.stdout:  # killed mid-run, with appends in progress
        printed.append(int(line))
        if len(printed) >= 60:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    printed += [int(x) for x in proc.stdout.read().split()]
    proc.stdout.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Journal(path) as j:
        assert all(j.get(s) is not None for s in printed), "a seq reported as journaled was lost"
        assert {r.seq for r in j.undelivered()} >= {s for s in printed if s % 3}
        assert j.append(d("after-restart"), 0.0) > max(printed)


def test_bad_arguments_and_closed_journal(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Journal(tmp_path / "a.db", retention_days=0)
    with pytest.raises(ValueError):
        Journal(tmp_path / "b.db", max_rows=0)
    j = Journal(tmp_path / "c.db")
    with pytest.raises(ValueError, match="part_id"):
        j.append({"decision": "accept"}, 0.0)
    with pytest.raises(ValueError):
        j.append(d("nan", p_defect=float("nan")), 0.0)
    assert j.counts()["total"] == 0  # failed appends leave nothing behind
    j.close()
    j.close()
    with pytest.raises(JournalError, match="closed"):
        j.append(d("p"), 0.0)
    (tmp_path / "bad.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError):
        Journal(tmp_path / "bad.db")


def journal_with_rows(path: Path, n: int = 3000) -> Path:
    """A closed journal of n pending decisions the size of real ones (about 260 bytes each)."""
    with Journal(path, synchronous="NORMAL") as j:
        for i in range(n):
            j.append(d(f"P-{i}", pad="x" * 200), 0.0)
    return path


def leaf_pages(path: Path, btree: str) -> list[int]:
    """Page numbers (from 1) of a table's or index's leaf pages, found by walking its b-tree in
    the file (SQLite's file format), since the dbstat table is not in every SQLite build (nor in
    the one TensorFlow loads into the same process)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (btree,)).fetchone()
    data = path.read_bytes()
    size = int.from_bytes(data[16:18], "big") or 65536
    leaves, todo = [], [root]
    while todo:
        page = todo.pop()
        base = (page - 1) * size
        head = base + (100 if page == 1 else 0)
        kind, cells = data[head], int.from_bytes(data[head + 3:head + 5], "big")
        if kind in (0x0A, 0x0D):  # index / table leaf
            leaves.append(page)
            continue
        assert kind in (0x02, 0x05), f"page {page}: not a b-tree page ({kind:#x})"
        todo.append(int.from_bytes(data[head + 8:head + 12], "big"))  # right-most child
        for i in range(cells):
            at = base + int.from_bytes(data[head + 12 + 2 * i:head + 14 + 2 * i], "big")
            todo.append(int.from_bytes(data[at:at + 4], "big"))  # each cell starts with its left child
    return sorted(leaves)


def overwrite_page(path: Path, page: int) -> None:
    """4 KiB of 0xff over one page, as a failing SD card leaves it."""
    with open(path, "r+b") as f:
        f.seek((page - 1) * 4096)
        f.write(b"\xff" * 4096)


def test_a_corrupt_journal_is_refused_at_start_with_the_file_named(tmp_path: Path) -> None:
    path = journal_with_rows(tmp_path / "journal.sqlite")
    pages = leaf_pages(path, "decisions_state_seq")  # the index counts() reads
    overwrite_page(path, pages[len(pages) // 2])
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.DatabaseError, match="malformed"):
        db.execute("SELECT state, COUNT(*) FROM decisions GROUP BY state").fetchall()
    with pytest.raises(JournalError) as err:
        Journal(path)
    msg = str(err.value)
    assert str(path) in msg and "corrupt" in msg and "Journal file corrupt" in msg  # the docs' recipe
    assert err.value.damaged
    # The daemon says so in one line (not "write failed", not a traceback) and exits 1.
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"journal:\n  path: {path}\nmqtt:\n  host: 127.0.0.1\n  port: 9\naudit:\n  dir: null\n")
    run = subprocess.run([sys.executable, "-m", "edge.cli", "--config", str(cfg), "--duration", "1", "--quiet"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout, run.stderr[-2000:]
    assert "journal unusable, stopping" in run.stderr and str(path) in run.stderr, run.stderr[-2000:]


def test_reads_from_a_damaged_journal_raise_journal_error(tmp_path: Path) -> None:
    path = journal_with_rows(tmp_path / "journal.sqlite")
    page = path.read_bytes().index(b'"part_id":"P-1500"') // 4096 + 1  # the table page holding P-1500
    assert page in leaf_pages(path, "decisions")
    overwrite_page(path, page)
    # counts() and a prune without retention read indexes only: the damage shows on the first real read
    with Journal(path, retention_days=None) as j:
        seq = 1501
        for read in (lambda: j.undelivered(), lambda: j.get(seq), lambda: j.is_pending(seq)):
            with pytest.raises(JournalError, match=f"{path}.*corrupt"):
                read()
        with pytest.raises(JournalError, match=f"{path}.*corrupt"):
            j.mark_delivered(seq)


def test_a_file_that_is_no_database_at_all_is_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    path.write_bytes(random.Random(0).randbytes(64 * 1024))
    with pytest.raises(JournalError) as err:
        Journal(path)
    assert str(path) in str(err.value) and "not an SQLite database" in str(err.value)


def test_recipe_switches_are_journaled_in_the_decisions_order_and_the_newest_outlives_retention(
        tmp_path: Path) -> None:
    now = [1_000_000.0]
    path = tmp_path / "j.db"
    with Journal(path, retention_days=1, clock=lambda: now[0]) as j:
        assert j.recipe_switches() == []  # a line without recipes: no table at all
        assert sqlite3.connect(path).execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'recipe_switches'").fetchone() == (0,)
        first = j.record_recipe("a", None, "start", "m-a")
        s1 = j.append(d("P-1"), now[0] + 5)
        second = j.record_recipe("b", "a", "opcua", "m-b", request_id="r-7")
        s2 = j.append(d("P-2"), now[0] + 5)
        assert (first.after_seq, second.after_seq) == (0, s1) and s1 <= second.after_seq < s2
        assert [(r.recipe, r.previous, r.source, r.request_id, r.model) for r in j.recipe_switches()] == [
            ("a", None, "start", None, "m-a"), ("b", "a", "opcua", "r-7", "m-b")]
        assert j.recipe_switches(limit=1)[0].to_dict()["switch"] == second.id
        now[0] += 3 * 86400
        j.prune()
        # Past retention, but the newest stays: it names the recipe a restart resumes.
        assert [r.recipe for r in j.recipe_switches()] == ["b"]
    with Journal(path) as j:  # and it survives a reopen
        assert j.recipe_switches()[-1].recipe == "b"
