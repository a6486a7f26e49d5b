"""Sessions kept in the page's memory, a CSRF token per session, and a brake on password guessing.

The cookie holds only a random id (HttpOnly, SameSite=Strict, Secure under TLS); who is
logged in stays on the server, so logging out or restarting the page ends every session.
Every POST must carry the session's CSRF token (form field or X-CSRF-Token header), compared
in constant time: SameSite alone is not enough on old tablets' browsers.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "edge_hmi"
MAX_FAILURES = 5  # per name or client within FAILURE_WINDOW_S, then LOCKOUT_S of refusals
FAILURE_WINDOW_S = 300.0
LOCKOUT_S = 60.0
MAX_SESSIONS = 1000  # the oldest are dropped beyond this: a login flood cannot fill memory


@dataclass
class Session:
    id: str
    csrf: str
    user: str | None  # None: a visitor on the login page (has a CSRF token for the login form)
    role: str | None
    expires: float


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class Sessions:
    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}
        self._failures: dict[str, _Failures] = {}

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._by_id.get(sid)
            if s is not None and s.expires < self._clock():
                del self._by_id[sid]
                return None
            return s

    def new(self, user: str | None = None, role: str | None = None) -> Session:
        lifetime = self.lifetime_s if user else min(self.lifetime_s, 3600.0)
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user, role, self._clock() + lifetime)
        with self._lock:
            self._by_id[s.id] = s
            while len(self._by_id) > MAX_SESSIONS:
                del self._by_id[next(iter(self._by_id))]
        return s

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    @staticmethod
    def csrf_ok(session: Session | None, token: str | None) -> bool:
        return session is not None and bool(token) and hmac.compare_digest(session.csrf, str(token))

    # -- guessing brake ----------------------------------------------------------------
    def locked(self, *keys: str) -> bool:
        now = self._clock()
        with self._lock:
            return any(self._failures.get(k, _Failures()).locked_until > now for k in keys)

    def failed(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            for k in keys:
                f = self._failures.setdefault(k, _Failures())
                f.times = [t for t in f.times if now - t < FAILURE_WINDOW_S] + [now]
                if len(f.times) >= MAX_FAILURES:
                    f.locked_until, f.times = now + LOCKOUT_S, []
            if len(self._failures) > 10 * MAX_SESSIONS:
                self._failures.clear()

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._failures.pop(k, None)
