"""The pages: Jinja2 templates (autoescaped) filled from the index, the evidence folders and the
review queue. Kept apart from the routes so each page's data is one plain function."""

from __future__ import annotations

import time
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from edge.hmi.queries import GALLERY_KINDS, GalleryFilter, counts_since, gallery, quarter_counts, reasons
from edge.hmi.sessions import Session
from edge.hmi.state import Hmi
from edge.hmi.svg import bars
from edge.hmi.yields import hourly, per_shift, shift_window

ENV = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                  autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
TIME_INPUT = "%Y-%m-%dT%H:%M"


def _render(name: str, request: Request, s: Session | None, status: int = 200, **ctx: Any) -> HTMLResponse:
    html = ENV.get_template(name).render(path=request.url.path, session=s, **ctx)
    return HTMLResponse(html, status)


def error(request: Request, status: int, message: str) -> HTMLResponse:
    return _render("error.html", request, None, status, status_code=status, message=message)


def login(request: Request, s: Session, target: str, message: str | None, status: int = 200) -> HTMLResponse:
    return _render("login.html", request, s, status, target=target, message=message)


def local(ts: float | None, tz: tzinfo, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, tz).strftime(fmt)


def live(request: Request, s: Session, recent: list[dict[str, Any]], health: dict[str, Any],
         tz: tzinfo) -> HTMLResponse:
    for r in recent:
        r["time"] = local(r["ts"], tz, "%H:%M:%S")
    return _render("live.html", request, s, recent=recent, current=recent[0] if recent else None, health=health)


def _time_arg(value: str | None, tz: tzinfo) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, TIME_INPUT).replace(tzinfo=tz).timestamp()
    except ValueError:
        return None


def rejects(request: Request, s: Session, hmi: Hmi, tz: tzinfo) -> HTMLResponse:
    q = request.query_params
    kind = q.get("kind", "all") if q.get("kind") in GALLERY_KINDS else "all"
    before = q.get("before")
    f = GalleryFilter(kind=kind, reason=q.get("reason") or None, since=_time_arg(q.get("since"), tz),
                      until=_time_arg(q.get("until"), tz),
                      before_seq=int(before) if before and before.isdigit() else None)
    db = hmi.db()
    try:
        rows = gallery(db, f)
        known = reasons(db)
    finally:
        db.close()
    for r in rows:
        r["time"] = local(r["ts"], tz)
        r["crop"] = hmi.evidence.find(r["seq"], r["part_id"], r["dts"])[0] is not None
    args = {k: v for k, v in (("kind", kind), ("reason", f.reason or ""), ("since", q.get("since", "")),
                              ("until", q.get("until", ""))) if v}
    more = None
    if len(rows) == f.limit:
        more = urlencode({**args, "before": rows[-1]["seq"]})
    return _render("rejects.html", request, s, rows=rows, reasons=known, f=f, args=args, more=more)


def yields(request: Request, s: Session, hmi: Hmi, tz: tzinfo) -> HTMLResponse:
    try:
        days = min(31, max(1, int(request.query_params.get("days", "7"))))
    except ValueError:
        days = 7
    now = time.time()
    since_h, since_s = now - 24 * 3600, now - days * 86400
    db = hmi.db()
    try:
        counts = quarter_counts(db, min(since_h, since_s), now)
        shift_start, shift_name = shift_window(now, tz, hmi.cfg.shifts)
        this_shift = counts_since(db, shift_start)
    finally:
        db.close()
    hours = hourly(counts, since_h, now, tz)
    shifts = per_shift(counts, since_s, now, tz, hmi.cfg.shifts)
    return _render("yield.html", request, s, days=days, shifts=shifts, shift_name=shift_name,
                   shift_start=local(shift_start, tz, "%H:%M"), this_shift=this_shift,
                   hour_plot=Markup(bars(hours, "Last 24 hours, per hour")),
                   shift_plot=Markup(bars(shifts, f"Last {days} days, per shift")))


def review(request: Request, s: Session, hmi: Hmi, tz: tzinfo, msg: str | None) -> HTMLResponse:
    items, waiting = hmi.review.pending(12)
    current = items[0] if items else None
    return _render("review.html", request, s, current=current, upcoming=items[1:], waiting=waiting, msg=msg,
                   labels=hmi.review.store.counts(), labels_dir=str(hmi.cfg.labels_dir))
