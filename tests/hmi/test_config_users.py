"""The page's config and password file: every bad input is named by file:line and stops the
page with exit status 2; passwords are stored as scrypt hashes; sessions and the guessing brake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from edge.config import load as load_daemon
from edge.config_file import ConfigError
from edge.hmi.config import load
from edge.hmi.sessions import LOCKOUT_S, MAX_FAILURES, Sessions
from edge.hmi.users import UsersError, authenticate, read_users, set_password, verify


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.hmi.cli", *args], cwd=ROOT, input=stdin, text=True,
                          capture_output=True, timeout=60, check=False)


def test_passwd_stores_a_scrypt_hash_that_verifies(tmp_path: Path) -> None:
    users = tmp_path / "users"
    r = _cli("passwd", str(users), "anna", "--role", "inspector", "--password-stdin", stdin="s3cret-line-7\n")
    assert r.returncode == 0, r.stderr
    text = users.read_text()
    assert "s3cret" not in text and text.startswith("anna:inspector:scrypt$16384$8$1$")
    assert os.stat(users).st_mode & 0o777 == 0o600
    got = read_users(users)
    assert authenticate(got, "anna", "s3cret-line-7") == got["anna"]
    assert authenticate(got, "anna", "s3cret-line-8") is None and authenticate(got, "bob", "s3cret-line-7") is None
    assert set_password(users, "anna", "viewer", "another-one") == "replaced"
    assert read_users(users)["anna"].role == "viewer" and verify("another-one", read_users(users)["anna"].hash)


def test_passwd_refuses_a_short_password_and_an_unknown_role(tmp_path: Path) -> None:
    r = _cli("passwd", str(tmp_path / "u"), "anna", "--role", "inspector", "--password-stdin", stdin="short\n")
    assert r.returncode == 2 and "at least 8 characters" in r.stderr
    r = _cli("passwd", str(tmp_path / "u"), "anna", "--role", "admin", "--password-stdin", stdin="long-enough\n")
    assert r.returncode == 2 and not (tmp_path / "u").exists()


def test_a_bad_password_file_names_each_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    set_password(users, "anna", "inspector", "long-enough-1")
    good = users.read_text().strip()
    users.write_text(f"# comment\n{good}\nbob:admin:{good.split(':', 2)[2]}\ncarl:viewer:plain-text-pw\n"
                     f"{good}\nonly-two:fields\n")
    with pytest.raises(UsersError) as e:
        read_users(users)
    assert str(e.value).splitlines() == [
        f"{users}:3: bob: role 'admin' is not one of viewer, inspector",
        f"{users}:4: carl: hash: not a scrypt$n$r$p$salt$hash field (made by edge-hmi passwd?)",
        f"{users}:5: anna: listed twice",
        f"{users}:6: expected name:role:hash, got 2 field(s)"]


def test_a_password_file_others_can_write_is_refused(tmp_path: Path) -> None:
    users = tmp_path / "users"
    set_password(users, "anna", "inspector", "long-enough-1")
    users.chmod(0o664)
    with pytest.raises(UsersError, match="writable by other users"):
        read_users(users)


def test_config_problems_are_named_by_line_and_the_page_does_not_start(tmp_path: Path) -> None:
    cfg = tmp_path / "hmi.yaml"
    cfg.write_text("listen:\n  host: 127.0.0.1\n  prot: 8088\nshifts:\n  - {name: early, start: '6:00'}\n"
                   "  - {name: late, start: '14:00'}\ntimezone: Mars/Olympus\njournal: j.sqlite\n")
    with pytest.raises(ConfigError) as e:
        load(cfg)
    assert str(e.value).splitlines() == [
        f"{cfg}:3: listen.prot: unknown key (not in the schema; check its spelling)",
        f"{cfg}:5: shifts.0.start: Value error, must be HH:MM (00:00 to 23:59), got '6:00' (got '6:00')",
        (f"{cfg}:7: timezone: Value error, unknown time zone 'Mars/Olympus' (an IANA name such as Europe/Berlin) "
         "(got 'Mars/Olympus')")]
    r = _cli("--config", str(cfg))
    assert r.returncode == 2 and f"{cfg}:3: listen.prot" in r.stderr


def test_tls_needs_both_files_and_a_missing_users_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "hmi.yaml"
    cfg.write_text("listen: {cert_file: c.pem}\n")
    r = _cli("--check-config", str(cfg))
    assert r.returncode == 2 and "cert_file and key_file go together" in r.stderr
    cfg.write_text("users_file: nobody\n")
    r = _cli("--check-config", str(cfg))
    assert r.returncode == 2 and f"{tmp_path / 'nobody'}: cannot read the password file" in r.stderr


def test_the_demo_configs_agree_with_each_other() -> None:
    page = load(ROOT / "demo" / "hmi.yaml")
    line = load_daemon(ROOT / "demo" / "hmi-line.yaml")
    assert page.journal == line.journal.path and page.audit_dir == line.audit.dir
    assert (page.mqtt.host, page.mqtt.port, page.mqtt.prefix) == ("127.0.0.1", line.mqtt.port, line.mqtt.prefix)
    assert page.listen.host == "127.0.0.1"
    assert set(read_users(page.users_file)) == {"viewer", "inspector"}
    assert yaml.safe_load((ROOT / "demo" / "hmi-line.yaml").read_text())["mqtt"]["host"] is None
    command = next(line[4:] for line in (ROOT / "demo" / "hmi.yaml").read_text().splitlines()
                   if "edge-hmi --config demo/hmi.yaml" in line)
    assert f"    {command}\n" in (ROOT / "README.md").read_text(), "the README starts the demo as its configs say"
    assert command in (ROOT / "demo" / "hmi-line.yaml").read_text() and f"    {command}\n" in (
        ROOT / "docs" / "hmi.md").read_text()


def test_sessions_end_and_guessing_is_braked() -> None:
    now = [1000.0]
    s = Sessions(60.0, clock=lambda: now[0])
    a = s.new("anna", "inspector")
    wrong = ("y" if a.csrf[0] == "x" else "x") + a.csrf[1:]  # "x" + csrf[1:] was the token itself 1 time in 64
    assert s.get(a.id) is a and Sessions.csrf_ok(a, a.csrf) and not Sessions.csrf_ok(a, wrong)
    assert not Sessions.csrf_ok(a, None) and not Sessions.csrf_ok(None, a.csrf)
    now[0] += 61
    assert s.get(a.id) is None
    for _ in range(MAX_FAILURES - 1):
        s.failed("user:anna")
    assert not s.locked("user:anna")
    s.failed("user:anna")
    assert s.locked("user:anna", "ip:1.2.3.4") and not s.locked("user:bob")
    now[0] += LOCKOUT_S + 1
    assert not s.locked("user:anna")
