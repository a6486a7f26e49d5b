"""The page's HTTP side: routes, access checks, CSRF and security headers (Starlette + Jinja2).

Every route but /login and /static needs a session; /review's POST needs the inspector role
and the session's CSRF token. No route writes the journal or talks to the gate: the worst a
page (or a bug in it) can do is label a crop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.hmi import pages
from edge.hmi.queries import get, recent
from edge.hmi.review import ReviewError
from edge.hmi.sessions import COOKIE, Session, Sessions
from edge.hmi.state import Hmi
from edge.hmi.users import authenticate
from edge.hmi.yields import zone

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_FORM = 16 * 1024
HEADERS = [
    (b"content-security-policy", (b"default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                                 b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")),
    (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Pure ASGI (streams pass through untouched): CSP without inline script, no framing, no caching of data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + HEADERS
                if not static and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


def create_app(hmi: Hmi) -> Starlette:
    tls = hmi.cfg.listen.tls
    tz = zone(hmi.cfg.timezone)

    def session_of(request: Request) -> Session | None:
        return hmi.sessions.get(request.cookies.get(COOKIE))

    def refuse(request: Request, s: Session | None, role: str | None) -> Response | None:
        """None when the request may go on; else the refusal (login page for a browser's page request)."""
        if s is None or s.user is None:
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", 303)
            return JSONResponse({"error": "login required"}, 401)
        if role == "inspector" and s.role != "inspector":
            return pages.error(request, 403, "This needs the inspector role.")
        return None

    def guarded(role: str | None = None) -> Callable[[Callable[..., Awaitable[Response]]],
                                                      Callable[[Request], Awaitable[Response]]]:
        def wrap(fn: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                s = session_of(request)
                denied = refuse(request, s, role)
                if denied is not None:
                    return denied
                assert s is not None
                if request.method == "POST":
                    form = await _form(request)
                    if form is None or not _same_origin(request) or not Sessions.csrf_ok(
                            s, form.get("csrf") or request.headers.get("x-csrf-token")):
                        return pages.error(request, 403, "Refused: the form's security token is missing or old. "
                                           "Reload the page and try again.")
                    return await fn(request, s, form)
                return await fn(request, s)
            return endpoint
        return wrap

    def set_cookie(resp: Response, s: Session) -> None:
        resp.set_cookie(COOKIE, s.id, httponly=True, samesite="strict", secure=tls, path="/",
                        max_age=int(hmi.cfg.session_hours * 3600))

    # -- login -------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        s = session_of(request)
        if s is None:
            s = hmi.sessions.new()
        resp = pages.login(request, s, _next(request.query_params.get("next")), None)
        set_cookie(resp, s)
        return resp

    async def login(request: Request) -> Response:
        s = session_of(request)
        form = await _form(request)
        if s is None or form is None or not _same_origin(request) or not Sessions.csrf_ok(s, form.get("csrf")):
            fresh = hmi.sessions.new()
            resp = pages.login(request, fresh, "/", "The login form had expired; please try again.", 403)
            set_cookie(resp, fresh)
            return resp
        name, password = form.get("user", "")[:64], form.get("password", "")[:1024]
        client = request.client.host if request.client else "?"
        keys = (f"user:{name}", f"ip:{client}")
        target = _next(form.get("next"))
        if hmi.sessions.locked(*keys):
            return pages.login(request, s, target, "Too many failed logins; wait a minute.", 429)
        user = await run_in_threadpool(authenticate, hmi.users, name, password)
        if user is None:
            hmi.sessions.failed(*keys)
            log.warning("login refused", extra={"user": name, "client": client})
            return pages.login(request, s, target, "Wrong name or password.", 401)
        hmi.sessions.succeeded(*keys)
        hmi.sessions.end(s.id)  # a new id after login: a planted cookie never becomes a session
        new = hmi.sessions.new(user.name, user.role)
        log.info("login", extra={"user": user.name, "role": user.role, "client": client})
        resp = RedirectResponse(target, 303)
        set_cookie(resp, new)
        return resp

    @guarded()
    async def logout(request: Request, s: Session, form: dict[str, str]) -> Response:
        hmi.sessions.end(s.id)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # -- live --------------------------------------------------------------------------
    @guarded()
    async def live(request: Request, s: Session) -> Response:
        recent = await run_in_threadpool(_recent, hmi)
        return pages.live(request, s, recent, hmi.poller.health, tz)

    @guarded()
    async def live_json(request: Request, s: Session) -> Response:
        recent = await run_in_threadpool(_recent, hmi)
        return JSONResponse({"recent": recent, "health": hmi.poller.health})

    @guarded()
    async def events(request: Request, s: Session) -> Response:
        q = hmi.hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                yield f"event: health\ndata: {json.dumps(hmi.poller.health, default=str)}\n\n"
                while True:
                    try:
                        text = await asyncio.wait_for(q.get(), 15.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if text is None:
                        return
                    yield text
            finally:
                hmi.hub.unsubscribe(q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    # -- evidence ----------------------------------------------------------------------
    async def _row(seq: int) -> dict[str, Any] | None:
        def q() -> dict[str, Any] | None:
            db = hmi.db()
            try:
                return get(db, seq)
            finally:
                db.close()
        return await run_in_threadpool(q)

    @guarded()
    async def crop(request: Request, s: Session) -> Response:
        seq = int(request.path_params["seq"])
        row = await _row(seq)
        png = None if row is None else hmi.evidence.find(seq, row["part_id"], row["dts"])[0]
        if png is None and row is None:  # the review queue also shows crops the index has pruned
            png = hmi.evidence.crops().get(seq)
        if png is None:
            return JSONResponse({"error": f"no crop saved for seq {seq}"}, 404)
        return FileResponse(png, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    @guarded()
    async def evidence(request: Request, s: Session) -> Response:
        seq = int(request.path_params["seq"])
        row = await _row(seq)
        meta = None if row is None else hmi.evidence.find(seq, row["part_id"], row["dts"])[1]
        if meta is not None:
            return Response(meta.read_bytes(), media_type="application/json")
        payload = await run_in_threadpool(hmi.index.journal_payload, seq)
        if payload is None:
            return JSONResponse({"error": f"no decision with seq {seq}"}, 404)
        return Response(payload, media_type="application/json")

    @guarded()
    async def rejects(request: Request, s: Session) -> Response:
        return await run_in_threadpool(pages.rejects, request, s, hmi, tz)

    @guarded()
    async def yields(request: Request, s: Session) -> Response:
        return await run_in_threadpool(pages.yields, request, s, hmi, tz)

    # -- review ------------------------------------------------------------------------
    @guarded("inspector")
    async def review_page(request: Request, s: Session) -> Response:
        return await run_in_threadpool(pages.review, request, s, hmi, tz, request.query_params.get("msg"))

    @guarded("inspector")
    async def review_post(request: Request, s: Session, form: dict[str, str]) -> Response:
        try:
            seq = int(form.get("seq", ""))
            rec = await run_in_threadpool(hmi.review.judge, seq, form.get("verdict", ""), s.user or "?")
        except (ValueError, ReviewError) as exc:
            msg = str(exc) if isinstance(exc, ReviewError) else "no such item"
            return RedirectResponse(f"/review?msg={quote(msg)}", 303)
        log.info("review verdict", extra={"user": s.user, "seq": rec["seq"], "verdict": rec["verdict"],
                                          "line_decision": rec.get("line_decision")})
        done = f"seq {rec['seq']}: {rec['verdict']}" + (f" ({rec['label']})" if rec.get("label") else "")
        return RedirectResponse(f"/review?msg={quote(done)}", 303)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hmi.hub.loop = asyncio.get_running_loop()
        hmi.status.start()
        await run_in_threadpool(hmi.poller.start)
        log.info("page ready", extra={"journal": str(hmi.cfg.journal), "indexed": hmi.index.last_seq()})
        try:
            yield
        finally:
            hmi.hub.close()
            hmi.poller.stop()
            hmi.status.stop()
            hmi.index.close()

    routes = [
        Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", live), Route("/api/live", live_json), Route("/events", events),
        Route("/crop/{seq:int}", crop), Route("/evidence/{seq:int}", evidence),
        Route("/rejects", rejects), Route("/yield", yields),
        Route("/review", review_page, methods=["GET"]), Route("/review", review_post, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders)
    return app


def _recent(hmi: Hmi) -> list[dict[str, Any]]:
    db = hmi.db()
    try:
        rows = recent(db, 20)
    finally:
        db.close()
    for r in rows:
        png, _ = hmi.evidence.find(r["seq"], r["part_id"], r["dts"])
        r["crop"] = png is not None
    return rows


async def _form(request: Request) -> dict[str, str] | None:
    """An urlencoded form (the only kind these pages send), bounded; None for anything else."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=20, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items()}


def _same_origin(request: Request) -> bool:
    """A POST whose Origin (sent by every current browser) names another site is refused outright.
    (Referrer-Policy same-origin, not no-referrer: under no-referrer a browser sends `Origin: null`.)"""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host")


def _next(target: str | None) -> str:
    """Only a path on this page after login: never another site (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
