"""Decisions as they happen: one thread reads the journal's new rows into the index and hands
them, with the line's health, to every open page over server-sent events.

SSE rather than websockets: one direction is all the live view needs, it is plain HTTP
(proxies, TLS and the session cookie work as for any page), and the browser reconnects by
itself. A slow page gets its oldest events dropped, never the poller blocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

from edge.hmi.index import JournalIndex, reader
from edge.hmi.queries import recent_faults
from edge.hmi.status import StatusWatch

log = logging.getLogger(__name__)

QUEUE = 100  # events held per page
STATUS_STALE_S = 35.0  # the daemon re-publishes every 10 s by default; three missed = stale


class Hub:
    """Subscribers are asyncio queues on the server's loop; the poller thread publishes to them."""

    def __init__(self) -> None:
        self._subs: set[asyncio.Queue[str | None]] = set()
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self) -> asyncio.Queue[str | None]:
        q: asyncio.Queue[str | None] = asyncio.Queue(QUEUE)
        with self._lock:
            self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[str | None]) -> None:
        with self._lock:
            self._subs.discard(q)

    def publish(self, event: str, data: dict[str, Any] | None) -> None:
        text = None if data is None else f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            subs = list(self._subs)
        for q in subs:
            loop.call_soon_threadsafe(_offer, q, text)

    def close(self) -> None:
        self.publish("end", None)


def _offer(q: asyncio.Queue[str | None], text: str | None) -> None:
    if q.full():
        q.get_nowait()  # drop the oldest: a page that cannot keep up sees the newest
    q.put_nowait(text)


class Poller:
    def __init__(self, index: JournalIndex, status: StatusWatch, hub: Hub, poll_s: float) -> None:
        self.index, self.status, self.hub, self.poll_s = index, status, hub, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hmi-poller", daemon=True)
        self.health: dict[str, Any] = {}
        self._last_health = ""

    def start(self) -> None:
        self.poll_once()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
            except Exception:
                log.exception("poll failed; retrying")

    def poll_once(self) -> None:
        res = self.index.sync()
        # every new decision (up to the 20 the page lists); after a catch-up (a start over a full
        # journal, a page that was stopped) only the newest is news
        for row in (res.newest if res.added <= 100 else res.newest[-1:]):
            self.hub.publish("decision", row)
        health = self.compute_health()
        text = json.dumps(health, sort_keys=True, default=str)
        self.health = health
        if res.added or text != self._last_health:
            self._last_health = text
            self.hub.publish("health", health)

    def compute_health(self) -> dict[str, Any]:
        st, received = self.status.snapshot()
        now = time.time()
        backlog = self.index.backlog()
        faults: dict[str, int] = {}
        if self.index.path.is_file():
            db = reader(self.index.path)
            try:
                faults = recent_faults(db, 200)
            finally:
                db.close()
        h: dict[str, Any] = {"ts": now, "journal": {"ok": backlog is not None, "error": self.index.error,
                                                    **(backlog or {})}}
        broker_cfg = self.status.cfg.host is not None
        h["broker"] = {"configured": broker_cfg, "connected": self.status.connected, "error": self.status.error}
        if st is None:
            h["daemon"] = {"state": "unknown" if broker_cfg else "no broker configured", "age_s": None}
        else:
            age = now - received
            state = str(st.get("state", "?"))
            if state == "online" and age > STATUS_STALE_S:
                state = "stale"
            h["daemon"] = {"state": state, "age_s": round(age, 1), "reason": st.get("reason"),
                           "uptime_s": st.get("uptime_s"), "parts": st.get("parts"), "accept": st.get("accept"),
                           "reject": st.get("reject"), "faults": st.get("faults")}
            cam = st.get("camera") or {}
            h["camera"] = {"connected": cam.get("connected"), "fault": cam.get("fault"), "fps": cam.get("fps")}
            drift = st.get("drift") or {}
            h["drift"] = {"drifting": sorted(k for k, v in drift.items() if v) if isinstance(drift, dict) else []}
            th = st.get("threshold") or {}
            h["model"] = {"id": st.get("model"), "threshold": th.get("value") if isinstance(th, dict) else th,
                          "recipe": st.get("recipe")}
            sh = st.get("shadow") or {}
            h["shadow"] = ({"id": sh.get("model"), "judged": sh.get("judged"), "disagree": sh.get("disagree")}
                           if sh else None)
        guard = {k: v for k, v in faults.items() if k in ("fault:occluded", "fault:unfamiliar")}
        h["guard"] = {"last_parts": 200, "faults": faults, "guard_faults": sum(guard.values())}
        return h
