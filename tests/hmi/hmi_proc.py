"""Run the real page (`python -m edge.hmi.cli`) as a subprocess on a free loopback port, and
talk to it like a browser would (cookie jar, CSRF token from the form), with urllib."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from broker import free_port, wait_port
from conftest import ROOT

from edge.delivery.journal import Journal
from edge.hmi.users import set_password
from edge.ops.audit import AuditSettings, AuditTrail
from edge.timestamps import iso

USERS = {"insp": ("inspector", "inspector-pw-1"), "view": ("viewer", "viewer-pw-12")}


def write_users(path: Path) -> Path:
    for name, (role, pw) in USERS.items():
        set_password(path, name, role, pw)
    return path


def write_config(d: Path, journal: Path, **over: Any) -> tuple[Path, int]:
    port = free_port()
    cfg: dict[str, Any] = {"listen": {"host": "127.0.0.1", "port": port}, "users_file": str(write_users(d / "users")),
                           "journal": str(journal), "audit_dir": str(d / "audit"), "labels_dir": str(d / "labels"),
                           "state_dir": str(d / "hmi-state"), "poll_s": 0.2, "timezone": "UTC"}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = d / "hmi.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, port


def fake_line(d: Path, n: int = 30, t0: float | None = None, step_s: float = 1.0) -> Path:
    """A real journal and audit folder as the daemon leaves them: n decisions cycling accept,
    reject (model), fault:occluded, each with a grey crop whose level is 100 + its index."""
    journal = Journal(d / "journal.sqlite", clock=_Clock(t0 or time.time() - n * step_s, step_s))
    audit = AuditTrail(AuditSettings(dir=d / "audit", sample_accepted=1.0))
    for i in range(n):
        kind = i % 3
        dec = {"part_id": f"P-{i:03d}", "ts": iso(time.time()), "decision": "accept" if kind == 0 else "reject",
               "reason": ("model", "model", "fault:occluded")[kind], "p_defect": (0.05, 0.97, None)[kind],
               "model": "0123456789ab", "threshold": 0.5}
        dec["seq"] = journal.append(dec, time.time() + 60)
        audit.record(dec, np.full((300, 300), 100 + i, np.uint8))
    assert audit.flush(10)
    audit.close()
    journal.close()
    return d / "journal.sqlite"


class _Clock:
    def __init__(self, t0: float, step: float) -> None:
        self.t, self.step = t0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class HmiProcess:
    def __init__(self, config: Path, port: int, scheme: str = "http") -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.hmi.cli", "--config", str(config)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.url = f"{scheme}://127.0.0.1:{port}"
        self.out = ""
        try:
            wait_port(port, 60, self.proc)
        except (RuntimeError, TimeoutError):
            self.stop()
            raise RuntimeError(f"edge-hmi did not start:\n{self.out}") from None

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, _ = self.proc.communicate()
        return self.out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


class Client:
    """A cookie-keeping HTTP client that does not follow redirects (tests look at them)."""

    def __init__(self, base: str, context: ssl.SSLContext | None = None) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect(),
                                                  urllib.request.HTTPSHandler(context=context))

    def request(self, path: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        req = urllib.request.Request(self.base + path, body, headers={"accept": "text/html", **(headers or {})})
        try:
            with self.opener.open(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def csrf(self, path: str) -> str:
        status, _h, body = self.request(path)
        m = re.search(rb'name="csrf" value="([^"]+)"', body)
        assert m, f"no CSRF field on {path} ({status}): {body[:300]!r}"
        return m.group(1).decode()

    def login(self, name: str) -> int:
        token = self.csrf("/login")
        status, _headers, _ = self.request("/login", {"csrf": token, "user": name, "password": USERS[name][1],
                                                    "next": "/"})
        return status
