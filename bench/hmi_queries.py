"""The operator page at a full journal: 1,000,000 decisions, by the journal's own schema.

    .venv/bin/python bench/hmi_queries.py [--rows 1000000] [--days 30] [--dir DIR] [--repeat 7]

A journal is made by `edge.delivery.journal.Journal` (its schema, WAL) and filled in one
transaction with rows spread over --days: 93% accepted, 5% rejected by the model, 2% faults
under four reasons (the rare reason is 0.1%). Then, each the median of --repeat runs:

- the page's index built from that journal (the first start over a full journal), and one
  incremental sync after 10 new decisions (what the live view does every poll_s);
- the gallery query: no filter, one reason (common and rare), faults only, one day's time
  range with a reason, a page deep in the past (keyset paging), and the reason list;
- the yield aggregation: quarter-hour counts and the hourly plot for 24 h, per shift for 7
  and 31 days (the whole journal), SVG included;
- the same pages over HTTP from the real page process (`python -m edge.hmi.cli`, logged in):
  /rejects, /rejects?reason=..., /yield?days=31, /api/live.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import random
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.delivery.journal import Journal
from edge.hmi.config import DEFAULT_SHIFTS
from edge.hmi.index import JournalIndex, reader
from edge.hmi.queries import GalleryFilter, gallery, quarter_counts, reasons, recent
from edge.hmi.svg import bars
from edge.hmi.users import set_password
from edge.hmi.yields import hourly, per_shift, zone
from edge.timestamps import iso

REASONS = [("model", 0.05), ("fault:occluded", 0.01), ("fault:unfamiliar", 0.006), ("fault:not_in_full_view", 0.003),
           ("fault:no_part", 0.001)]


def make_journal(path: Path, rows: int, days: float) -> tuple[float, float]:
    Journal(path, retention_days=None, max_rows=None).close()  # the schema, exactly as the daemon makes it
    t1 = time.time()
    t0 = t1 - days * 86400
    step = (t1 - t0) / rows
    rng = random.Random(0)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")

    def gen() -> Any:
        for i in range(rows):
            ts = t0 + i * step
            u, reason, decision = rng.random(), "model", "accept"
            acc = 0.0
            for r, share in REASONS:
                acc += share
                if u < acc:
                    reason, decision = r, "reject"
                    break
            p = None if reason.startswith("fault:") else round(rng.random() if decision == "reject" else
                                                               rng.random() * 0.05, 4)
            payload = json.dumps({"seq": i + 1, "part_id": f"P-{i:07d}", "ts": iso(ts), "frame_ts": iso(ts - 0.004),
                                  "decision": decision, "p_defect": p, "threshold": 0.0703, "reason": reason,
                                  "model": "575a54ae1928", "latency_ms": 3.1}, separators=(",", ":"))
            yield i + 1, f"P-{i:07d}", ts, ts + 2.0, "delivered", ts + 0.01, payload

    db.executemany("INSERT INTO decisions (seq, part_id, created_ts, deadline_ts, state, done_ts, payload) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", gen())
    db.execute("COMMIT")
    db.close()
    return t0, t1


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, out


def line(name: str, ms: float, detail: str = "") -> None:
    print(f"  {name:<52} {ms:9.1f} ms  {detail}")


def bench_queries(index_path: Path, t0: float, t1: float, repeat: int) -> None:
    db = reader(index_path)
    tz = zone(None)
    day = t0 + (t1 - t0) / 2
    print("gallery (48 per page, newest first):")
    for name, f in [("no filter", GalleryFilter()), ("reason=model", GalleryFilter(reason="model")),
                    ("reason=fault:no_part (0.1% of parts)", GalleryFilter(reason="fault:no_part")),
                    ("faults only", GalleryFilter(kind="fault")),
                    ("one day mid-journal, reason=fault:occluded",
                     GalleryFilter(reason="fault:occluded", since=day, until=day + 86400)),
                    ("one day mid-journal, any reason", GalleryFilter(since=day, until=day + 86400)),
                    ("page below seq 500000", GalleryFilter(before_seq=500_000))]:
        ms, rows = timed(lambda f=f: gallery(db, f), repeat)
        line(name, ms, f"{len(rows)} rows")
    ms, rs = timed(lambda: reasons(db), repeat)
    line("reason list", ms, f"{len(rs)} reasons")
    ms, _ = timed(lambda: recent(db, 20), repeat)
    line("live view: newest 20", ms)
    print("yield:")
    for name, since, plot in [("24 h, hourly plot", t1 - 86400, "hour"), ("7 days, per shift", t1 - 7 * 86400, "shift"),
                              ("31 days (whole journal), per shift", t1 - 31 * 86400, "shift")]:
        def run(since: float = since, plot: str = plot, name: str = name) -> int:
            counts = quarter_counts(db, since, t1)
            b = hourly(counts, since, t1, tz) if plot == "hour" else per_shift(counts, since, t1, tz, DEFAULT_SHIFTS)
            return len(bars(b, name)) and sum(x.total for x in b)
        ms, n = timed(run, repeat)
        line(name, ms, f"{n} parts")
    db.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_http(d: Path, journal: Path, repeat: int) -> None:
    users = d / "users"
    set_password(users, "bench", "viewer", "bench-password")
    port = free_port()
    cfg = d / "hmi.yaml"
    cfg.write_text(json.dumps({"listen": {"port": port}, "users_file": str(users), "journal": str(journal),
                               "audit_dir": None, "labels_dir": str(d / "labels"), "state_dir": str(d / "page")}))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge.hmi.cli", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit("the page did not start") from None
                time.sleep(0.05)
        print(f"over HTTP (the page process, index built in a separate state_dir: start to listening "
              f"{time.perf_counter() - start:.1f} s):")
        jar = http.cookiejar.CookieJar()
        op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        base = f"http://127.0.0.1:{port}"
        token = re.search(rb'name="csrf" value="([^"]+)"', op.open(base + "/login").read()).group(1).decode()
        op.open(base + "/login", urllib.parse.urlencode({"csrf": token, "user": "bench",
                                                         "password": "bench-password"}).encode()).read()
        for path in ("/api/live", "/rejects", "/rejects?reason=fault%3Ano_part", "/rejects?kind=fault",
                     "/yield?days=7", "/yield?days=31"):
            ms, size = timed(lambda path=path: len(op.open(base + path).read()), repeat)
            line(f"GET {path}", ms, f"{size // 1024} KiB")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--days", type=float, default=30.0)
    p.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed after)")
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="hmi-bench-") as tmp:
        d = args.dir or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        journal = d / "journal.sqlite"
        journal.unlink(missing_ok=True)
        start = time.perf_counter()
        t0, t1 = make_journal(journal, args.rows, args.days)
        print(f"journal: {args.rows} rows over {args.days:g} days, {journal.stat().st_size / 2**20:.0f} MiB, "
              f"made in {time.perf_counter() - start:.1f} s")
        index = JournalIndex(journal, d / "state")
        start = time.perf_counter()
        res = index.sync()
        print(f"index: built in {time.perf_counter() - start:.1f} s ({res.added} rows), "
              f"{index.path.stat().st_size / 2**20:.0f} MiB")
        j = Journal(journal, retention_days=None, max_rows=None, synchronous="NORMAL")
        for i in range(10):
            j.append({"part_id": f"N-{i}", "ts": iso(time.time()), "decision": "accept", "reason": "model",
                      "p_defect": 0.01, "model": "575a54ae1928"}, time.time() + 2)
        start = time.perf_counter()
        res = index.sync()
        line("incremental sync, 10 new decisions", (time.perf_counter() - start) * 1000, f"{res.added} rows")
        j.close()
        index.close()
        bench_queries(index.path, t0, t1, args.repeat)
        bench_http(d, journal, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
