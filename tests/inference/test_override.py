"""A threshold override cannot turn the line into an accept-everything machine (issue 18.1):
refused at start and on SIGHUP unless acknowledged, and loud in status and metrics when it runs.
Real daemon process, real Mosquitto, the shipped bundle and its recorded validation scores."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from broker import Mosquitto, free_port
from conftest import ROOT
from conftest_mqtt import Collector, mosquitto, retained  # noqa: F401 - fixture
from daemon_run import BUNDLE, DaemonProcess, drawn_video, write_config

from edge.delivery.contract import Topics
from edge.inference import bundle as bundle_fmt
from edge.inference import override


@pytest.fixture(scope="module")
def drawn_line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return drawn_video(tmp_path_factory.mktemp("drawn"))


def shipped() -> bundle_fmt.Bundle:
    b = bundle_fmt.load(BUNDLE)
    if override.SCORES_KEY not in b.meta:
        pytest.fail(f"{BUNDLE}/model.json has no {override.SCORES_KEY}: record them with `edge-train scores`")
    return b


def test_recorded_scores_reproduce_the_trainers_validation_figures() -> None:
    """The scores the check relies on give, at the bundle's threshold, the validation confusion the
    trainer recorded independently when it exported the bundle."""
    for name in ("casting-cnn", "casting-cnn-crisp"):
        b = bundle_fmt.load(ROOT / "models" / name)
        c = override.check(b.meta, None)
        val = b.meta["metrics"]["validation"]["int8"]
        assert (c.escapes, c.false_rejects) == (val["false_accepts"], val["false_rejects"]), name
        assert c.defects + c.goods == val["n"] and not c.overridden


def test_an_override_that_accepts_validation_defects_is_refused_and_a_stricter_one_is_told() -> None:
    b = shipped()
    with pytest.raises(override.ThresholdRefused, match=r"model\.threshold: 1 would accept \d+ of the bundle's"):
        override.check(b.meta, 1.0)
    stricter = override.check(b.meta, b.threshold / 2)
    assert stricter.overridden and stricter.escapes <= stricter.bundle_escapes
    assert stricter.false_rejects >= stricter.bundle_false_rejects and "overrides the bundle's" in stricter.describe()
    lenient = override.check(b.meta, 1.0, acknowledged_escapes=10_000)
    assert lenient.escapes > lenient.bundle_escapes and lenient.acknowledged_escapes == 10_000
    too_few = lenient.escapes - 1
    with pytest.raises(override.ThresholdRefused, match=f"accept_validation_escapes is {too_few}"):
        override.check(b.meta, 1.0, acknowledged_escapes=too_few)
    no_scores = {k: v for k, v in b.meta.items() if k != override.SCORES_KEY}
    with pytest.raises(override.ThresholdRefused, match="records no validation scores"):
        override.check(no_scores, min(1.0, b.threshold * 2))
    assert override.check(no_scores, b.threshold / 2).overridden  # stricter is allowed without scores


def test_daemon_refuses_to_start_on_an_unacknowledged_lenient_threshold(tmp_path: Path, drawn_line: Path) -> None:
    shipped()
    config = write_config(tmp_path, free_port(), "test/override/cam1", drawn_line, model={"threshold": 1.0})
    run = subprocess.run([sys.executable, "-m", "edge.cli", "--config", str(config), "--duration", "5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [ln for ln in run.stderr.splitlines() if "model.threshold" in ln]
    assert len(lines) == 1 and "would accept" in lines[0] and "accept_validation_escapes" in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "journal.sqlite").exists()  # refused before anything started


def test_an_acknowledged_override_runs_loudly_and_sighup_cannot_sneak_one_in(
        mosquitto: Mosquitto, tmp_path: Path, drawn_line: Path) -> None:  # noqa: F811
    b = shipped()
    lenient = override.check(b.meta, 1.0, acknowledged_escapes=10_000)
    prefix = f"test/{tmp_path.name[-10:]}/cam1"
    t = Topics(prefix)
    metrics_port = free_port()
    config = write_config(tmp_path, mosquitto.port, prefix, drawn_line, camera={"loop": True},
                          model={"threshold": 1.0, "accept_validation_escapes": lenient.escapes},
                          service={"metrics_listen": f"127.0.0.1:{metrics_port}"})
    sub = Collector(mosquitto.port, [t.decision])
    with closing(sub), DaemonProcess(config) as proc:
        assert sub.wait(lambda ms: len(ms) >= 2, 60)
        st = retained(mosquitto.port, t.status)
        assert st is not None and st.json["state"] == "online"
        th = st.json["threshold"]
        assert th["override"] is True and th["value"] == 1.0 and th["bundle"] == b.threshold
        assert th["validation"]["escapes"] == lenient.escapes and th["acknowledged_escapes"] == lenient.escapes
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "edge_threshold_override 1.0" in text
        assert f'edge_threshold_validation_escapes{{threshold="in_force"}} {float(lenient.escapes)}' in text
        # SIGHUP with the acknowledgement gone: refused, the running model and threshold stay.
        doc = yaml.safe_load(config.read_text())
        del doc["model"]["accept_validation_escapes"]
        config.write_text(yaml.safe_dump(doc))
        n = len(sub.on(t.decision))
        proc.send_signal(signal.SIGHUP)
        assert sub.wait(lambda ms: len(ms) >= n + 3, 60)
        out = proc.stop()
    assert proc.returncode == 0, out[-3000:]
    assert out.count("would accept") >= 1 and "reload refused" in out, out[-3000:]
    start = [ln for ln in out.splitlines() if "overrides the bundle's" in ln]
    assert start and "WARNING" in start[0], out[-3000:]
    assert {json.loads(m.payload)["threshold"] for m in sub.on(t.decision)} == {1.0}


def test_edge_train_scores_rebuilds_the_same_record_and_refuses_other_data(tmp_path: Path) -> None:
    import shutil  # noqa: PLC0415

    from edge.offline.dataset import default_data_root  # noqa: PLC0415

    data = default_data_root()
    if not (data / "train").is_dir():
        pytest.skip(f"dataset not found at {data} (set CASTING_DATA)")
    copy = tmp_path / "b"
    shutil.copytree(ROOT / "models" / "casting-cnn-crisp", copy, ignore=shutil.ignore_patterns("figures"))
    meta = json.loads((copy / "model.json").read_text())
    shipped_record = meta.pop(override.SCORES_KEY)
    bundle_fmt.write_sidecar(copy, meta)  # re-sealed: a deliberate change
    cli = [sys.executable, "-m", "trainer.cli", "scores", str(copy), "--data", str(data)]
    run = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((copy / "model.json").read_text())[override.SCORES_KEY] == shipped_record
    wrong = subprocess.run([*cli[:-1], str(tmp_path / "nowhere")], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert wrong.returncode == 2 and "missing" in wrong.stderr and "Traceback" not in wrong.stderr
