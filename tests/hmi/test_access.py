"""Access to the real page (a uvicorn subprocess over a real journal and audit folder): who may
see what, CSRF on every POST, and that a verdict labels a crop without touching the journal."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import make_server_certs
from hmi_proc import USERS, Client, HmiProcess, fake_line, write_config

pytestmark = pytest.mark.xdist_group("hmi_access")


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("line")
    fake_line(d, 30)
    return d


@pytest.fixture(scope="module")
def page(line: Path) -> Iterator[HmiProcess]:
    config, port = write_config(line, line / "journal.sqlite")
    p = HmiProcess(config, port)
    yield p
    p.stop()


def _journal_rows(path: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT seq, state, payload FROM decisions ORDER BY seq").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("path", ["/", "/rejects", "/yield", "/review"])
def test_a_page_without_a_session_sends_the_browser_to_the_login(page: HmiProcess, path: str) -> None:
    status, headers, _ = Client(page.url).request(path)
    assert status == 303
    assert headers["location"] == f"/login?next={path}"


@pytest.mark.parametrize("path", ["/api/live", "/events", "/crop/2", "/evidence/2"])
def test_data_without_a_session_is_refused(page: HmiProcess, path: str) -> None:
    status, _, body = Client(page.url).request(path, headers={"accept": "*/*"})
    assert status == 401
    assert b"png" not in body.lower() and b"p_defect" not in body


def test_a_forged_session_cookie_is_refused(page: HmiProcess) -> None:
    status, _, _ = Client(page.url).request("/api/live", headers={"cookie": "edge_hmi=forged", "accept": "*/*"})
    assert status == 401


def test_a_wrong_password_gets_no_session(page: HmiProcess) -> None:
    c = Client(page.url)
    token = c.csrf("/login")
    status, _, body = c.request("/login", {"csrf": token, "user": "insp", "password": "not-it-at-all"})
    assert status == 401 and b"Wrong name or password" in body
    assert c.request("/api/live", headers={"accept": "*/*"})[0] == 401


def test_a_login_without_the_forms_token_is_refused(page: HmiProcess) -> None:
    c = Client(page.url)
    c.csrf("/login")

    status, _, _ = c.request("/login", {"csrf": "guess", "user": "insp", "password": USERS["insp"][1]})
    assert status == 403
    assert c.request("/api/live", headers={"accept": "*/*"})[0] == 401


def test_login_goes_back_only_to_a_path_of_this_page(page: HmiProcess) -> None:

    c = Client(page.url)
    token = c.csrf("/login")
    status, headers, _ = c.request("/login", {"csrf": token, "user": "view", "password": USERS["view"][1],
                                              "next": "//evil.example/x"})
    assert status == 303 and headers["location"] == "/"


def test_a_viewer_sees_the_line_but_cannot_review(page: HmiProcess, line: Path) -> None:
    c = Client(page.url)
    assert c.login("view") == 303
    status, _, body = c.request("/api/live", headers={"accept": "*/*"})
    assert status == 200 and json.loads(body)["recent"][0]["seq"] == 30
    assert c.request("/rejects")[0] == 200
    assert c.request("/review")[0] == 403
    token = c.csrf("/")
    status, _, _ = c.request("/review", {"csrf": token, "seq": "29", "verdict": "ok"})
    assert status == 403
    assert not (line / "labels" / "labels.jsonl").exists()


def test_pages_carry_a_strict_content_security_policy(page: HmiProcess) -> None:
    c = Client(page.url)
    c.login("view")
    status, headers, body = c.request("/")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    assert b"<script src=\"/static/hmi.js\"" in body and b"http" not in body.split(b"<body>")[0].replace(
        b"http-equiv", b""), "no asset from another site"


def test_an_inspectors_verdict_needs_the_token_and_lands_in_the_manifest_only(page: HmiProcess, line: Path) -> None:
    before = _journal_rows(line / "journal.sqlite")
    c = Client(page.url)
    assert c.login("insp") == 303
    token = c.csrf("/review")
    assert c.request("/review", {"seq": "29", "verdict": "defect"})[0] == 403  # no token
    assert c.request("/review", {"csrf": token, "seq": "29", "verdict": "defect"},
                     headers={"origin": "http://evil.example"})[0] == 403  # another site's form
    assert not (line / "labels" / "labels.jsonl").exists()
    status, headers, _ = c.request("/review", {"csrf": token, "seq": "29", "verdict": "defect"})
    assert status == 303 and "def_front" in headers["location"]
    rows = [json.loads(x) for x in (line / "labels" / "labels.jsonl").read_text().splitlines()]
    crop = line / "audit" / "000000000029-P-028.png"
    assert [(r["label"], r["who"], r["decision"], r["part_id"]) for r in rows] == [("def_front", "insp", "reject",
                                                                                   "P-028")]
    assert rows[0]["sha256"] == hashlib.sha256(crop.read_bytes()).hexdigest()
    assert (line / "labels" / rows[0]["file"]).read_bytes() == crop.read_bytes()
    assert c.request("/review", {"csrf": token, "seq": "29", "verdict": "ok"})[1]["location"].startswith(
        "/review?msg=seq%2029%20was%20already%20reviewed")
    assert _journal_rows(line / "journal.sqlite") == before, "the published decisions are untouched"


def test_the_gallery_crop_is_the_audit_file(page: HmiProcess, line: Path) -> None:
    c = Client(page.url)
    c.login("view")
    status, headers, body = c.request("/crop/2", headers={"accept": "image/*"})
    assert status == 200 and headers["content-type"] == "image/png"
    assert body == (line / "audit" / "000000000002-P-001.png").read_bytes()
    status, _, body = c.request("/evidence/3", headers={"accept": "*/*"})
    assert json.loads(body)["reason"] == "fault:occluded"


def test_tls_when_a_certificate_is_configured(tmp_path: Path) -> None:
    make_server_certs(tmp_path)
    journal = fake_line(tmp_path, 3)
    config, port = write_config(tmp_path, journal, listen={"cert_file": str(tmp_path / "server.pem"),
                                                           "key_file": str(tmp_path / "server.key")})
    p = HmiProcess(config, port, "https")
    try:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        c = Client(p.url, ctx)
        assert c.login("view") == 303
        assert any(k.secure for k in c.jar), "the session cookie is Secure under TLS"
        assert c.request("/api/live", headers={"accept": "*/*"})[0] == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10).read()
    finally:
        p.stop()


def test_the_gallery_pages_and_filters_over_http(page: HmiProcess) -> None:
    c = Client(page.url)
    c.login("view")
    status, _, body = c.request("/rejects?reason=fault%3Aoccluded")
    seqs = [int(s) for s in re.findall(rb'<figure class="card fault" data-seq="(\d+)"', body)]
    assert status == 200 and seqs == list(range(30, 0, -3))  # every third part is a fault:occluded one
    assert b'id="more"' not in body
    status, _, body = c.request("/rejects?kind=reject")
    assert [int(s) for s in re.findall(rb'data-seq="(\d+)"', body)] == list(range(29, 0, -3))
