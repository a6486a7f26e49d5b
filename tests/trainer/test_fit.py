"""edge-train fit end to end on a few images for a few steps (seconds, never a full run)."""

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from edge.inference import bundle  # noqa: E402
from edge.inference.model import Classifier  # noqa: E402
from edge.inference.policy import threshold_grid  # noqa: E402
from edge.offline.dataset import list_labelled, load_samples  # noqa: E402
from edge.offline.metrics import summarize  # noqa: E402
from edge.offline.perturb import FOCUS_CHANGES, refocus_all  # noqa: E402
from tests.conftest import part_image, write_split  # noqa: E402
from tests.station.test_links import links  # noqa: E402
from trainer.cli import main  # noqa: E402
from trainer.export import ExportError, check_int8_accuracy  # noqa: E402
from trainer.fit import FitOptions, run  # noqa: E402

QUICK = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16", "--max-int8-drop", "100"]


def test_fit_real_subset_writes_verified_bundle_and_resumes(casting_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["fit", "--data", str(casting_data), "--out", str(out), "--limit", "20", "--arch", "seed"]
    assert main(args + QUICK) == 0
    b = bundle.load(out)
    m = b.meta
    assert m["image_size"] == [300, 300] and m["color"] == "grayscale" and m["positive_class"] == "def_front"
    assert m["input"] == {"dtype": "uint8", "scale": 1.0, "zero_point": 0, "meaning": "raw grayscale pixels 0..255"}
    assert m["architecture"] == "seed" and m["params"] == 676945
    assert m["training"]["command"].startswith("edge-train fit --data")
    assert len(m["training"]["data"]["train_fingerprint"]) == 64
    assert {"brightness", "contrast", "sharpness"} <= set(m["image_stats"])  # the edge's drift baseline
    assert m["image_stats"]["sharpness"]["mean"] > 0 and m["image_stats"]["sharpness"]["std"] > 0
    for fig in ("class_proportions", "augmented_batch", "training_curves", "confusion_int8_test"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    assert "## Test metrics at the operating threshold" in (out / "report.md").read_text()
    assert "## Camera focus" in (out / "report.md").read_text()
    focus = m["metrics"]["focus"]
    assert set(focus) == set(FOCUS_CHANGES)
    assert all(r["validation"]["n"] > 0 and r["test"]["n"] == 40 for r in focus.values())

    # The recorded int8 metrics are what the edge runtime computes from the bundle file.
    samples = list_labelled(casting_data / "test")
    test = load_samples([s for s in samples if s.label == 0][:20] + [s for s in samples if s.label == 1][:20])
    clf = Classifier.from_bundle(b)
    recomputed = summarize(test.labels, clf.predict(test.images), b.threshold)
    assert recomputed == json.loads(json.dumps(m["metrics"]["test_all"]["int8"]))
    sharp = summarize(test.labels, clf.predict(refocus_all(test.images, "sharpen_1.0")), b.threshold)
    assert sharp["confusion"] == focus["sharpen_1.0"]["test"]["confusion"]

    assert main(args + QUICK) == 2  # the folder holds a run: refuse to overwrite it
    assert main(args + ["--epochs", "2"] + QUICK[2:] + ["--resume", "--swa-epochs", "2"]) == 0
    history = (out / "history.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1"]  # epoch 1 continued, not redone
    # Weight averaging ran its own epochs after the resumed ones and was a candidate.
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["weight_average"]["val_loss_per_epoch"]) == 2
    assert "weight_average" in metrics["batchnorm_recalibration"]
    # A resume of the finished run redoes only what follows training: the average is the saved one.
    swa = out / "checkpoints" / "swa.keras"
    saved = swa.stat().st_mtime_ns
    assert main(args + ["--epochs", "2"] + QUICK[2:] + ["--resume", "--swa-epochs", "2"]) == 0
    assert swa.stat().st_mtime_ns == saved  # not taken again
    assert json.loads((out / "metrics.json").read_text())["weight_average"] == metrics["weight_average"]
    assert (out / "history.csv").read_text().strip().splitlines() == history  # no epoch trained
    # other settings for the phase: it runs again
    assert main(args + ["--epochs", "2"] + QUICK[2:] + ["--resume", "--swa-epochs", "1"]) == 0
    assert swa.stat().st_mtime_ns != saved
    assert len(json.loads((out / "metrics.json").read_text())["weight_average"]["val_loss_per_epoch"]) == 1


def test_a_resume_may_export_the_logit_and_the_edge_decides_as_the_fit_recorded(casting_data: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["fit", "--data", str(casting_data), "--out", str(out), "--limit", "20", "--arch", "seed",
            "--views", "2"] + QUICK
    assert main(args + ["--output", "p_defect"]) == 0  # as every bundle before 2026-12-07
    before = bundle.load(out).meta
    assert "represents" not in before["output"] and before["output"]["scale"] == 1 / 256
    assert "output p_defect in steps of 0.00391" in (out / "report.md").read_text()
    assert main(args + ["--resume"]) == 0  # the default export, after training only
    b = bundle.load(out)
    m = b.meta
    assert m["output"]["represents"] == "logit" and m["output"]["meaning"].startswith("p_defect = sigmoid(")
    assert m["output"]["scale"] != 1 / 256 and m["training"]["options"]["output"] == "logit"
    words = f"output the logit of p_defect, steps of {m['output']['scale']:.3g} log-odds"
    assert words in (out / "report.md").read_text()
    assert np.isclose(threshold_grid("logit"), m["threshold"], rtol=0, atol=1e-12).any()
    samples = list_labelled(casting_data / "test")
    test = load_samples([s for s in samples if s.label == 0][:20] + [s for s in samples if s.label == 1][:20])
    clf = Classifier.from_bundle(b)
    assert clf.spec.output == "logit" and clf.spec.views == 2
    recomputed = summarize(test.labels, clf.predict(test.images), b.threshold)
    assert recomputed == json.loads(json.dumps(m["metrics"]["test_all"]["int8"]))
    # the float weights are the same: the two exports differ in their output only
    float_p = keras.models.load_model(out / "model.keras", compile=False).predict(
        test.images[..., None].astype(np.float32), verbose=0).ravel()
    one = Classifier.from_bundle(b)
    one.spec = replace(one.spec, views=1)
    z_int8 = np.log(one.predict(test.images) / (1 - one.predict(test.images)))
    z_float = np.log(np.clip(float_p, 1e-6, 1 - 1e-6) / (1 - np.clip(float_p, 1e-6, 1 - 1e-6)))
    inside = np.abs(z_float) < 9  # the export clips at +-10
    assert inside.sum() >= 5 and np.median(np.abs(z_int8 - z_float)[inside]) < 0.5



def test_a_tone_matched_fit_records_its_tones_and_the_edge_decides_as_it_recorded(
        casting_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["fit", "--data", str(casting_data), "--out", str(out), "--limit", "12", "--views", "1",
            "--rim-finder", "combined"] + QUICK
    assert main(args + ["--tone", "match", "--augment", "line"]) == 2  # not part-only: refused by name
    assert "--tone match: tones are matched inside the part's rim" in capsys.readouterr().err
    assert not out.exists()
    assert main(args + ["--tone", "match"]) == 0
    b = bundle.load(out)
    tone = b.meta["input"]["part_only"]["tone"]
    assert len(tone) == 257 and np.all(np.diff(tone) >= 0) and b.meta["training"]["options"]["tone"] == "match"
    assert b.meta["training"]["init"] is None  # random weights; an --init bundle is named by its digest
    clf = Classifier.from_bundle(b)
    assert clf.spec.tone == tuple(tone)
    samples = list_labelled(casting_data / "test")
    test = load_samples([s for s in samples if s.label == 0][:12] + [s for s in samples if s.label == 1][:12])
    recomputed = summarize(test.labels, clf.predict(test.images), b.threshold)
    assert recomputed == json.loads(json.dumps(b.meta["metrics"]["test_all"]["int8"]))
    # started from that bundle: model.json names the starting weights by digest, not only by path
    again = tmp_path / "again"
    assert main(args[:4] + [str(again)] + args[5:] + ["--tone", "match", "--init", str(out)]) == 0
    started = bundle.load(again).meta["training"]["init"]
    assert started == {"path": str(out), "float_model_sha256": bundle.sha256_file(out / "model.keras")}

def test_fit_skips_and_lists_bad_files_and_converts_odd_images(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_split(data / "train", 12, seed=1)
    write_split(data / "test", 4, seed=2)
    bad = {"train/ok_front/zero.jpg": b"", "train/def_front/notes.jpg": b"not a jpeg"}
    for rel, content in bad.items():
        (data / rel).write_bytes(content)
    ok, enc = cv2.imencode(".jpg", part_image(9))
    (data / "test/ok_front/cut.jpg").write_bytes(enc.tobytes()[:500])
    colour = cv2.cvtColor(cv2.resize(part_image(10, defect=True), (400, 320)), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(data / "train/def_front/colour.png"), colour)
    cv2.imwrite(str(data / "train/ok_front/deep.png"), part_image(11).astype(np.uint16) * 257)
    out = tmp_path / "run"
    assert main(["fit", "--data", str(data), "--out", str(out)] + QUICK) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    skipped = {Path(p).name: why for p, why in metrics["skipped_files"]}
    assert set(skipped) == {"zero.jpg", "notes.jpg", "cut.jpg"}
    assert "truncated" in skipped["cut.jpg"] and "zero-byte" in skipped["zero.jpg"]
    assert bundle.load(out).meta["training"]["data"]["train_images"] == 26  # 24 + colour + 16-bit
    assert "cut.jpg" in (out / "skipped.txt").read_text() and "## Skipped files" in (out / "report.md").read_text()
    ev = metrics["threshold_evidence"]  # the validation images on either side of the threshold, named
    low = [e["p_defect"] for e in ev["lowest_defects"]]
    assert low == sorted(low) and all(e["image"].startswith("def_front/") for e in ev["lowest_defects"])
    assert all(e["image"].startswith("ok_front/") for e in ev["highest_good"]) and ev["threshold"] == metrics["threshold"]
    assert ev["lowest_defects"][0]["image"] in (out / "report.md").read_text()
    assert (out / "figures/threshold_evidence.png").stat().st_size > 1000
    pits = metrics["pit_detection"]  # lone pinholes drawn on every good validation part, judged as the edge would
    assert pits["parts"] == sum(metrics["validation"]["int8"]["confusion"][0]) > 0
    assert list(pits["rejected"]) == ["0.3", "0.45", "0.6"]
    for row in pits["rejected"].values():
        assert list(row) == ["1", "1.5", "2.2"] and all(0.0 <= r <= 1.0 for r in row.values())
    assert "## Lone pinholes" in (out / "report.md").read_text()
    bn = metrics["batchnorm_recalibration"]  # the default architecture has batch norm
    assert bn["chosen"] in ("best_checkpoint", "final_weights") and 0 < bn["images"] < 26  # the fit part
    assert "loss" in bn["final_weights"]["validation_after"] and "loss" in bn["best_checkpoint"]["validation_before"]


def test_the_training_seed_leaves_the_validation_split_alone(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Runs of different --seed are compared on validation: it must be the same images."""
    data = tmp_path / "data"
    write_split(data / "train", 12, seed=1)
    write_split(data / "test", 4, seed=2)
    runs = {"a": ["--seed", "5"], "b": ["--seed", "6"], "c": ["--seed", "5", "--split-seed", "9"]}
    meta = {}
    for name, extra in runs.items():
        assert main(["fit", "--data", str(data), "--out", str(tmp_path / name), "--arch", "seed"] + QUICK + extra) == 0
        meta[name] = bundle.load(tmp_path / name).meta
    val = {k: m["training"]["data"]["validation_fingerprint"] for k, m in meta.items()}
    assert val["a"] == val["b"] != val["c"]
    assert meta["a"]["sha256"] != meta["b"]["sha256"]  # the seed did change the training
    assert meta["c"]["training"]["options"]["split_seed"] == 9
    # `edge-train compare` rebuilds exactly the validation images each bundle was judged on.
    report = tmp_path / "compare.json"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(data), "--resamples", "20",
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["validation"]["fingerprint"] == val["a"]
    for role, name in (("champion", "a"), ("challenger", "b")):
        recorded = meta[name]["metrics"]["validation"]["int8"]
        got = result["models"][role]
        assert (got["false_accepts"], got["false_rejects"]) == (recorded["false_accepts"], recorded["false_rejects"])
    bs = result["bootstrap"]
    assert bs["resamples"] == 20 and bs["b_lower"] + bs["tie"] + bs["b_higher"] == pytest.approx(1.0)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "c"), "--data", str(data)]) == 2  # other split
    cv2.imwrite(str(data / "train/ok_front/late.png"), part_image(55))  # the data changed since training
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(data)]) == 2
    assert "its validation images" in capsys.readouterr().err


def _trained_seed_run(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A tiny seed-architecture run to resume: (data folder, run folder, its fit arguments)."""
    data = tmp_path / "data"
    write_split(data / "train", 12, seed=1)
    write_split(data / "test", 4, seed=2)
    out = tmp_path / "run"
    args = ["fit", "--data", str(data), "--out", str(out), "--arch", "seed"] + QUICK
    assert main(args) == 0
    return data, out, args


def test_resume_refuses_other_options_or_data_than_the_checkpoints(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A resume that changed the seed, augmentation or images would ship weights no command made."""
    data, out, args = _trained_seed_run(tmp_path)
    record = json.loads((out / "checkpoints/options.json").read_text())
    assert record["options"]["seed"] == 123 and record["options"]["augment"] == "notebook"  # auto, resolved
    capsys.readouterr()
    refusals = {"--seed 123 (now 9)": ["--seed", "9"], "--augment 'notebook' (now 'line')": ["--augment", "line"],
                "--split-seed 123 (now 5)": ["--split-seed", "5"]}
    for message, extra in refusals.items():
        assert main(args + extra + ["--resume"]) == 2
        err = capsys.readouterr().err
        assert message in err and "options.json" in err and "Traceback" not in err
    skipped = (out / "skipped.txt").read_text()
    (data / "train/ok_front/junk.jpg").write_bytes(b"not a jpeg")  # other data, and one more skipped file
    assert main(args + ["--resume"]) == 2
    assert "other training data" in capsys.readouterr().err
    assert (out / "skipped.txt").read_text() == skipped  # the refused resume left the run's record alone
    (data / "train/ok_front/junk.jpg").unlink()
    two = args[:-len(QUICK)] + ["--epochs", "2"] + QUICK[2:]
    assert main(two + ["--resume"]) == 0  # --epochs may grow
    resumed = (out / "history.csv").read_text().strip().splitlines()
    assert len(resumed) == 3  # header + epochs 1, 2
    # The resumed epoch trained on the batches an uninterrupted run sees, not epoch 1's again.
    assert main([a if a != str(out) else str(tmp_path / "straight") for a in two]) == 0
    straight = (tmp_path / "straight/history.csv").read_text().strip().splitlines()
    for got, want in zip(resumed[1:], straight[1:], strict=True):
        np.testing.assert_allclose([float(v) for v in got.split(",")], [float(v) for v in want.split(",")],
                                   rtol=1e-4)
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2  # --epochs 1: fewer than the 2 the checkpoints hold
    err = capsys.readouterr().err
    assert "--epochs 1" in err and "2 epochs" in err and "Traceback" not in err
    # Checkpoints from before the record existed: resumed on trust, with a warning, and recorded.
    (out / "checkpoints/options.json").unlink()
    capsys.readouterr()
    assert main(args[:-len(QUICK)] + ["--epochs", "2"] + QUICK[2:] + ["--resume"]) == 0
    assert "carry no record of their options" in capsys.readouterr().err
    assert json.loads((out / "checkpoints/options.json").read_text()) == record


def test_fit_runs_mirrored_over_two_devices(tmp_path: Path) -> None:
    """The several-GPU path (MirroredStrategy), on two logical CPU devices: see tests/mirrored_fit.py."""
    data = tmp_path / "data"
    write_split(data / "train", 12, seed=1)
    write_split(data / "test", 4, seed=2)
    out = tmp_path / "run"
    args = ["fit", "--data", str(data), "--out", str(out), "--swa-epochs", "1"] + QUICK
    r = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "mirrored_fit.py"), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MirroredStrategy with devices" in r.stderr and "CPU:1" in r.stderr
    m = bundle.load(out).meta
    assert m["architecture"] == "edge" and m["training"]["epochs_run"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["weight_average"]["val_loss_per_epoch"]) == 1
    assert set(metrics["batchnorm_recalibration"]) >= {"best_checkpoint", "final_weights", "weight_average"}


@pytest.mark.parametrize("case", ["missing_class", "empty_class", "no_test", "no_validation", "unreadable_class"])
def test_bad_data_folders_exit_2_with_message_and_no_traceback(tmp_path: Path, case: str) -> None:
    """... and leave --out untouched, so the corrected command needs no --force."""
    data = tmp_path / "data"
    write_split(data / "train", 2)
    write_split(data / "test", 2)
    expected = {"missing_class": "missing class folder 'def_front'", "empty_class": "holds no image files",
                "no_test": "data/test: missing", "no_validation": "split into 2 to fit and 0 to validate",
                "unreadable_class": "no readable images left"}[case]
    if case == "unreadable_class":
        for f in (data / "test/def_front").iterdir():
            f.write_bytes(b"not a jpeg")
    if case == "missing_class":
        for f in (data / "train/def_front").iterdir():
            f.unlink()
        (data / "train/def_front").rmdir()
    elif case == "empty_class":
        for f in (data / "test/ok_front").iterdir():
            f.unlink()
    elif case == "no_test":
        for d in (data / "test").iterdir():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
        (data / "test").rmdir()
    # no_validation: 2 images per class, of which --val-fraction 0.2 validates none
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "fit", "--data", str(data), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_failed_gate_or_diverged_training_leaves_no_bundle(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A loadable bundle next to a rejected run's metrics would be shipped as if it had passed."""
    data, out, args = _trained_seed_run(tmp_path)
    # The same run resumed with a gate no model can pass (below any CLI value: the library takes it).
    with pytest.raises(ExportError, match="no bundle written"):
        run(FitOptions(data=data, out=out, arch="seed", epochs=1, steps_per_epoch=2, batch_size=16,
                       resume=True, max_int8_drop=-101.0))
    assert not (out / "model.json").exists() and not (out / "model.tflite").exists()
    with pytest.raises(bundle.BundleError):
        bundle.load(out)
    assert (out / "rejected.tflite").is_file() and (out / "metrics.json").is_file()
    # A rate that overflows the weights: the loss turns NaN, the run stops, nothing is shipped.
    capsys.readouterr()
    assert main(args + ["--force", "--learning-rate", "1e30"]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "--learning-rate" in err and "Traceback" not in err
    assert not (out / "model.json").exists() and not (out / "model.tflite").exists()
    assert not (out / "rejected.tflite").exists()  # --force cleared the earlier run's rejected model


@pytest.mark.parametrize("flag,value", [("--learning-rate", "nan"), ("--learning-rate", "0"),
                                        ("--learning-rate", "inf"), ("--max-int8-drop", "nan"),
                                        ("--max-int8-drop", "-1"), ("--max-int8-drop", "inf"),
                                        ("--swa-learning-rate", "inf"), ("--distill-weight", "0.3")])
def test_bad_numeric_options_exit_2_before_touching_out(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        flag: str, value: str) -> None:
    out = tmp_path / "out"
    assert main(["fit", "--data", str(tmp_path), "--out", str(out), flag, value]) == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


OUR_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.-]+: ")
TF_CPP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}: [IWEF] "  # TF's C++ log
                         r"|^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ", re.MULTILINE)  # absl's


@pytest.fixture(scope="module")
def console_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """A real `edge-train fit` from the console script, on drawn images: (process, run folder)."""
    tmp = tmp_path_factory.mktemp("console_fit")
    data, out = tmp / "data", tmp / "run"
    write_split(data / "train", 12, seed=1)
    write_split(data / "test", 4, seed=2)
    script = Path(sys.executable).parent / "edge-train"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "trainer.cli"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # this process set it: not the user
    r = subprocess.run([*cmd, "fit", "--data", str(data), "--out", str(out), *QUICK], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, out


@pytest.mark.xdist_group("console_fit")  # one worker builds the shared fit
def test_a_real_fit_writes_only_its_own_log_to_stderr(
        console_fit: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """TensorFlow, Keras and LiteRT start-up and converter chatter buried the trainer's log (issue 18)."""
    r, _ = console_fit
    assert "bundle written" in r.stderr
    assert not TF_CPP_LINE.search(r.stderr), r.stderr
    for noise in ("oneDNN custom operations", "absl::InitializeLog", "cuda", "XNNPACK", "fully_quantize",
                  "UserWarning", "Assets written to"):
        assert noise.lower() not in r.stderr.lower(), (noise, r.stderr)
    assert [line for line in r.stderr.splitlines() if not OUR_LOG_LINE.match(line)] == []
    assert r.stdout == ""  # the converter's model export listed its 30 endpoints here


@pytest.mark.xdist_group("console_fit")  # one worker builds the shared fit
def test_the_report_links_only_figures_it_wrote_and_never_dataset_images(
        console_fit: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """A bundle copied to models/ must keep working links: sheets of dataset images stay out of git."""
    _, out = console_fit
    report = (out / "report.md").read_text()
    targets = links(report)
    assert "figures/confusion_int8_test.png" in targets and all((out / t).is_file() for t in targets), targets
    for sheet in ("augmented_batch", "threshold_evidence", "misclassified_int8_test"):
        assert not any(sheet in t for t in targets)
        assert (f"`figures/{sheet}.png`" in report) == (out / "figures" / f"{sheet}.png").is_file(), sheet
    assert (out / "figures/augmented_batch.png").is_file()


_FILTERED = """
import os, sys
from trainer.cli import TF_NOISE, _stderr_filtered
with _stderr_filtered(TF_NOISE):
    os.write(2, b"I0000 00:00:1796237096.297376    4025 port.cc:153] oneDNN custom operations are on.\\n")
    os.write(2, b"2024-01-11 05:40:05.061907: W tensorflow/core/platform/cpu_feature_guard.cc:182] AVX\\n")
    os.write(2, b"E0000 00:00:1796237096.297377    4025 kernel.cc:12] a real error\\n")
    print("UserWarning: a real warning", file=sys.stderr, flush=True)
    if sys.argv[1] == "abort":
        os.write(2, b"F0000 00:00:1796237096.297378    4025 check.cc:1] Check failed: last words\\n")
        os.abort()
print("after the filter", file=sys.stderr)
"""


@pytest.mark.parametrize("end", ["exit", "abort"])
def test_the_log_filter_drops_tensorflow_info_and_keeps_errors_even_through_a_crash(end: str) -> None:
    r = subprocess.run([sys.executable, "-c", _FILTERED, end], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    kept = ["E0000 00:00:1796237096.297377    4025 kernel.cc:12] a real error", "UserWarning: a real warning"]
    if end == "abort":
        assert r.returncode != 0
        assert r.stderr.splitlines() == kept + ["F0000 00:00:1796237096.297378    4025 check.cc:1] Check failed: "
                                                "last words"]
    else:
        assert r.returncode == 0 and r.stderr.splitlines() == kept + ["after the filter"]


def test_int8_gate_refuses_a_model_that_lost_accuracy() -> None:
    assert check_int8_accuracy(0.995, 0.993, 0.5) == pytest.approx(0.2)
    with pytest.raises(ExportError, match="0.9860 is 0.90 points below float 0.9950"):
        check_int8_accuracy(0.995, 0.986, 0.5)


def test_recalibrated_batchnorm_holds_the_exact_statistics_of_its_inputs() -> None:
    import keras

    from trainer.loop import recalibrate_batchnorm

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1))
    conv = keras.layers.Conv2D(4, 3)(inp)
    bn = keras.layers.BatchNormalization()
    x = keras.layers.BatchNormalization()(keras.layers.ReLU()(bn(conv)))
    model = keras.Model(inp, x)
    images = np.random.default_rng(0).uniform(0, 255, (50, 16, 16, 1)).astype(np.float32)
    assert recalibrate_batchnorm(model, images, batch_size=8) == 2
    feats = np.asarray(keras.Model(inp, conv)(images), np.float64)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), feats.mean(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), feats.var(axis=(0, 1, 2)), rtol=1e-3)
    # The second layer saw the first one's new statistics: its output is standardized.
    out = np.asarray(model(images, training=False), np.float64)
    second = model.layers[-1]
    np.testing.assert_allclose(np.asarray(second.moving_mean), np.asarray(
        keras.Model(inp, second.input)(images)).mean(axis=(0, 1, 2)), rtol=1e-4)
    assert np.abs(out.mean(axis=(0, 1, 2))).max() < 1e-3


def test_weight_average_is_the_mean_of_the_weights_at_each_epoch_end() -> None:
    import keras

    from trainer.loop import WeightAverage

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    avg = WeightAverage()
    avg.set_model(model)
    seen = []
    for epoch in range(3):
        model.set_weights([np.full((3, 2), epoch * 2.0, np.float32), np.arange(2, dtype=np.float32) * epoch])
        seen.append(model.get_weights())
        avg.on_epoch_end(epoch)
    assert avg.count == 3
    np.testing.assert_allclose(avg.mean[0], np.full((3, 2), 2.0))  # mean of 0, 2, 4
    np.testing.assert_allclose(avg.mean[1], np.mean([w[1] for w in seen], axis=0))
