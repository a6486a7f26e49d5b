"""Who may open the page: a password file of `name:role:scrypt$n$r$p$salt$hash` lines.

Passwords are stored as scrypt hashes (stdlib hashlib, memory-hard, so a stolen file is slow
to crack), never in clear; `edge-hmi passwd FILE NAME --role R` adds or replaces a line.
A file the page cannot read correctly stops it with file:line, never starts it half-open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROLES = ("viewer", "inspector")  # an inspector may also do everything a viewer does
NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and tens of ms per check on a line PC
MIN_PASSWORD = 8
MAX_BYTES = 1 << 20


class UsersError(ValueError):
    """A password file that cannot be used; the message names file:line."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    hash: str

    @property
    def can_review(self) -> bool:
        return self.role == "inspector"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt$n$r$p$salt$hash field (made by edge-hmi passwd?)")
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or n > 2**20:
        raise ValueError(f"scrypt parameters n={n} r={r} p={p} out of range")
    salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("salt or hash too short")
    return n, r, p, salt, digest


def verify(password: str, stored: str) -> bool:
    n, r, p, salt, digest = _parse_hash(stored)
    got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(digest),
                         maxmem=256 * n * r + 2**20)
    return hmac.compare_digest(got, digest)


_DUMMY = hash_password("not a password of anyone", b"edge-hmi-dummy-salt")


def read_users(path: Path) -> dict[str, User]:
    """Every user in the file; UsersError naming each bad line (all of them at once)."""
    try:
        raw = path.read_bytes()[:MAX_BYTES + 1]
    except OSError as exc:
        raise UsersError(f"{path}: cannot read the password file: {exc.strerror or exc} "
                         "(create it with: edge-hmi passwd FILE NAME --role inspector)") from None
    if len(raw) > MAX_BYTES:
        raise UsersError(f"{path}: larger than {MAX_BYTES} bytes; not a password file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UsersError(f"{path}:{line}: not UTF-8 text") from None
    users: dict[str, User] = {}
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.strip().split(":")
        if len(fields) != 3:
            problems.append(f"{path}:{n}: expected name:role:hash, got {len(fields)} field(s)")
            continue
        name, role, stored = fields
        if not NAME.match(name):
            problems.append(f"{path}:{n}: name {name[:40]!r}: letters, digits, '.', '_', '-' (1-64)")
        elif role not in ROLES:
            problems.append(f"{path}:{n}: {name}: role {role[:40]!r} is not one of {', '.join(ROLES)}")
        elif name in users:
            problems.append(f"{path}:{n}: {name}: listed twice")
        else:
            try:
                _parse_hash(stored)
            except ValueError as exc:
                problems.append(f"{path}:{n}: {name}: hash: {exc}")
                continue
            users[name] = User(name, role, stored)
    if problems:
        raise UsersError("\n".join(problems))
    if not users:
        raise UsersError(f"{path}: no users (add one with: edge-hmi passwd {path} NAME --role inspector)")
    mode = path.stat().st_mode & 0o777
    if mode & 0o022:  # anyone who can write it can make themselves an inspector
        raise UsersError(f"{path}: writable by other users (mode {oct(mode)}); chmod 600 {path}")
    if mode & 0o004:
        log.warning("password file readable by every user on the box: its hashes can be attacked offline",
                    extra={"path": str(path), "mode": oct(mode), "fix": f"chmod 600 {path}"})
    return users


def authenticate(users: dict[str, User], name: str, password: str) -> User | None:
    """The user when the password matches; an unknown name costs the same scrypt as a known one."""
    user = users.get(name)
    ok = verify(password, user.hash if user else _DUMMY)
    return user if user is not None and ok else None


def set_password(path: Path, name: str, role: str, password: str) -> str:
    """Add or replace `name` in the file (created 0600); returns "added" or "replaced"."""
    if not NAME.match(name):
        raise UsersError(f"name {name!r}: letters, digits, '.', '_', '-' (1-64)")
    if role not in ROLES:
        raise UsersError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise UsersError(f"password: at least {MIN_PASSWORD} characters")
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    entry = f"{name}:{role}:{hash_password(password)}"
    what = "added"
    out = []
    for line in lines:
        if line.split(":", 1)[0] == name and not line.lstrip().startswith("#"):
            if what == "added":
                out.append(entry)
            what = "replaced"
        else:
            out.append(line)
    if what == "added":
        out.append(entry)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, path)
    return what
