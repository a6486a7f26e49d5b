"""The page in a real headless browser (Debian's chromium, driven by its chromedriver through
selenium) beside the real daemon on its simulated line (drawn parts), a real Mosquitto and
the real journal: the live view follows the daemon's decisions, the gallery shows the audit
crops, a key press in the review queue lands in the label manifest, and a browser without a
session gets the login page. Screenshots go to $EDGE_HMI_SHOTS (default: the test's tmp)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, have_mosquitto
from daemon_run import BUNDLE, DaemonProcess, write_config
from hmi_proc import USERS, HmiProcess
from hmi_proc import write_config as write_hmi_config

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
WAIT_S = 90  # generous: the daemon, the page and the browser share a small machine with training jobs
PREFIX = "test/hmi/cam1"

pytestmark = pytest.mark.xdist_group("hmi_browser")


def _need() -> None:
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed")
    if not (BUNDLE / "model.tflite").is_file():
        pytest.skip(f"no bundle at {BUNDLE}")


@dataclass
class Line:
    dir: Path
    page: HmiProcess
    driver: Any
    shots: Path

    @property
    def journal(self) -> Path:
        return self.dir / "journal.sqlite"

    def rows(self, sql: str, *args: Any) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def wait(self, what: str, cond: Any, timeout: float = WAIT_S) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(lambda d: cond(d), what)

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.shots / f"hmi-{name}.png"))


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    _need()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    d = tmp_path_factory.mktemp("hmi-line")
    shots = Path(os.environ.get("EDGE_HMI_SHOTS") or d / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with Mosquitto(d / "broker") as broker:
        config = write_config(d, broker.port, PREFIX, "sim", camera={"loop": True},
                              sim={"fps": 15.0, "speed_px": 32.0}, drift={"enabled": False},
                              mqtt={"status_interval_s": 2.0})
        hmi_config, port = write_hmi_config(d, d / "journal.sqlite",
                                            mqtt={"host": "127.0.0.1", "port": broker.port, "prefix": PREFIX})
        with pytest.MonkeyPatch.context() as mp:  # for the daemon's environment only
            mp.setenv("CASTING_DATA", str(d / "no-dataset"))  # the simulated line draws its parts: no dataset crops
            daemon = DaemonProcess(config)
        with daemon:
            page = HmiProcess(hmi_config, port)
            opts = webdriver.ChromeOptions()
            opts.binary_location = str(CHROMIUM)
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
                opts.add_argument(arg)
            driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
            driver.set_page_load_timeout(WAIT_S)
            try:
                yield Line(d, page, driver, shots)
            finally:
                driver.quit()
                out = page.stop()
                daemon.stop()
                if "Traceback" in out:
                    pytest.fail(f"the page logged a traceback:\n{out[-3000:]}")


def _open_once(line: Line, path: str, what: str, ready: Any) -> None:
    """Open `path`, reloading until `ready(driver)` holds: the page's index follows the journal by
    polling, so on a loaded machine the newest parts may not be in it at the first load."""
    url = line.page.url + path
    line.driver.get(url)
    line.wait(what, lambda d: ready(d) or d.get(url))


def _login(line: Line, name: str) -> None:
    from selenium.webdriver.common.by import By

    drv = line.driver
    drv.delete_all_cookies()
    drv.get(line.page.url + "/login")
    drv.find_element(By.ID, "user").send_keys(name)
    drv.find_element(By.ID, "password").send_keys(USERS[name][1])
    drv.find_element(By.ID, "login-button").click()
    line.wait("logged in", lambda d: d.find_elements(By.ID, "who"))


def test_a_browser_without_a_session_gets_the_login_page_and_no_data(line: Line) -> None:
    from selenium.webdriver.common.by import By

    drv = line.driver
    drv.delete_all_cookies()
    drv.get(line.page.url + "/rejects")
    assert drv.current_url == line.page.url + "/login?next=/rejects"
    assert drv.find_elements(By.ID, "login") and not drv.find_elements(By.ID, "gallery")
    status = drv.execute_async_script(
        "const done = arguments[0]; fetch('/api/live').then(r => done(r.status), e => done(String(e)));")
    assert status == 401
    line.shot("login")


def test_the_live_view_follows_the_daemons_decisions(line: Line) -> None:
    from selenium.webdriver.common.by import By

    _login(line, "insp")
    drv = line.driver
    assert drv.current_url == line.page.url + "/"
    line.wait("the event stream is open", lambda d: d.find_element(By.ID, "conn").text == "live")
    first = drv.find_element(By.ID, "current-seq").text
    # No reload from here on: what changes on the page came over the event stream.
    seq = int(line.wait("a new decision shown", lambda d: (t := d.find_element(By.ID, "current-seq").text)
                        and t != first and t))
    (payload,) = line.rows("SELECT payload FROM decisions WHERE seq = ?", seq)[0]
    decision = json.loads(payload)
    shown = drv.find_element(By.ID, "current-verdict").text
    expected = ("ACCEPT" if decision["decision"] == "accept" else
                "FAULT" if decision["reason"].startswith("fault:") else "REJECT")
    if drv.find_element(By.ID, "current-seq").text == str(seq):  # the line may have moved on meanwhile
        assert shown == expected
        assert drv.find_element(By.ID, "current-part").text == decision["part_id"]
    rows = drv.find_elements(By.CSS_SELECTOR, f'#recent tr[data-seq="{seq}"] td')
    assert rows and rows[2].text == decision["part_id"] and rows[3].text == expected
    line.wait("the daemon online", lambda d: d.find_element(By.ID, "h-daemon").text.startswith("online"))
    line.wait("the camera connected", lambda d: d.find_element(By.ID, "h-camera").text.startswith("connected"))
    line.wait("the model named", lambda d: d.find_element(By.ID, "h-model").text.split(" ")[0] == decision["model"])
    line.wait("the current crop shown", lambda d: d.execute_script(
        "const i = document.getElementById('current-crop'); return i.complete && i.naturalWidth === 300 && "
        "!i.classList.contains('hidden');"))
    assert drv.find_element(By.ID, "h-broker").text == "connected"
    line.shot("live")


def test_the_gallery_shows_the_real_crops_and_filters_by_reason(line: Line) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _login(line, "view")
    drv = line.driver
    line.wait("rejected parts in the journal", lambda d: len(line.rows(
        "SELECT seq FROM decisions WHERE json_extract(payload, '$.decision') = 'reject'")) >= 2)
    line.wait("rejects in the gallery", lambda d: d.get(line.page.url + "/rejects") or
              len(d.find_elements(By.CSS_SELECTOR, "#gallery figure img")) >= 2)
    card = drv.find_elements(By.CSS_SELECTOR, "#gallery figure")[0]
    seq = int(card.get_attribute("data-seq"))
    img = card.find_element(By.TAG_NAME, "img")
    line.wait("the crop loaded", lambda d: d.execute_script("return arguments[0].complete && "
                                                            "arguments[0].naturalWidth === 300;", img))
    got = drv.execute_async_script(
        "const done = arguments[1]; fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {"
        " let s = ''; new Uint8Array(b).forEach(x => s += String.fromCharCode(x)); done(btoa(s)); });",
        img.get_attribute("src"))
    (png,) = sorted((line.dir / "audit").glob(f"{seq:012d}-*.png"))
    assert hashlib.sha256(base64.b64decode(got)).digest() == hashlib.sha256(png.read_bytes()).digest()
    line.shot("rejects")
    reasons = [o.get_attribute("value") for o in Select(drv.find_element(By.ID, "f-reason")).options][1:]
    assert reasons, "the reasons seen are offered as filters"
    Select(drv.find_element(By.ID, "f-reason")).select_by_value(reasons[0])
    drv.find_element(By.ID, "f-apply").click()
    line.wait("filtered", lambda d: f"reason={reasons[0].replace(':', '%3A')}" in d.current_url)
    cards = drv.find_elements(By.CSS_SELECTOR, "#gallery figure")
    assert cards and {c.get_attribute("data-reason") for c in cards} == {reasons[0]}
    first = int(cards[0].get_attribute("data-seq"))
    cards[0].find_element(By.CSS_SELECTOR, "a.evidence").click()
    line.wait("the evidence JSON", lambda d: d.current_url.endswith(f"/evidence/{first}"))
    evidence = json.loads(drv.find_element(By.TAG_NAME, "body").text)
    assert (evidence["seq"], evidence["reason"]) == (first, reasons[0])


def test_a_key_press_in_the_review_queue_lands_in_the_label_manifest(line: Line) -> None:
    from selenium.webdriver.common.by import By

    _login(line, "insp")
    drv = line.driver
    _open_once(line, "/review", "a part to review", lambda d: d.find_elements(By.ID, "review"))
    item = drv.find_element(By.ID, "review")
    seq = int(item.get_attribute("data-seq"))
    line.wait("the crop under review", lambda d: d.execute_script(
        "const i = document.getElementById('review-crop'); return i.complete && i.naturalWidth === 300;"))
    line.shot("review")
    (crop,) = sorted((line.dir / "audit").glob(f"{seq:012d}-*.png"))
    before = line.rows("SELECT seq, state, payload FROM decisions WHERE seq = ?", seq)
    drv.find_element(By.TAG_NAME, "body").send_keys("d")
    line.wait("the verdict taken", lambda d: (m := d.find_elements(By.ID, "review-message"))
              and m[0].text.startswith(f"seq {seq}: defect"))
    rows = [json.loads(x) for x in (line.dir / "labels" / "labels.jsonl").read_text().splitlines()]
    assert rows[-1]["sha256"] == hashlib.sha256(crop.read_bytes()).hexdigest()
    assert (rows[-1]["label"], rows[-1]["who"]) == ("def_front", "insp")
    assert (line.dir / "labels" / rows[-1]["file"]).read_bytes() == crop.read_bytes()
    after = line.rows("SELECT seq, payload FROM decisions WHERE seq = ?", seq)
    assert [(s, p) for s, _st, p in before] == after, "the published decision is unchanged"
    new = drv.find_elements(By.ID, "review")
    assert not new or int(new[0].get_attribute("data-seq")) != seq, "the queue moved on"


def test_the_yield_page_plots_this_lines_parts(line: Line) -> None:
    from selenium.webdriver.common.by import By

    _login(line, "view")
    drv = line.driver
    _open_once(line, "/yield", "this run's parts in the plot", lambda d: any(
        int(x) for g in d.find_elements(By.CSS_SELECTOR, "#hour-plot g[data-counts]")
        for x in g.get_attribute("data-counts").split(",")))
    hours = [[int(x) for x in g.get_attribute("data-counts").split(",")]
             for g in drv.find_elements(By.CSS_SELECTOR, "#hour-plot g[data-counts]")]
    assert len(hours) in (24, 25)  # 25: the first hour begins mid-way
    in_page = sum(map(sum, hours))
    assert 0 < in_page <= line.rows("SELECT COUNT(*) FROM decisions")[0][0], "every part of this run, none invented"
    assert drv.find_elements(By.CSS_SELECTOR, "#shift-plot svg")
    line.shot("yield")
