"""edge-inspect --replay on real files the tests write, and on the real test split."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.inference import bundle
from edge.inference.model import Classifier
from edge.offline.dataset import list_labelled, load_samples
from edge.offline.metrics import summarize
from edge.vision.preprocess import load_image
from tests.conftest import ROOT, part_image

SHIPPED = bundle.DEFAULT_BUNDLE


@pytest.fixture(scope="module")
def shipped() -> bundle.Bundle:
    return bundle.load(SHIPPED)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_replay_of_real_test_split_reproduces_bundle_metrics(casting_data: Path, shipped: bundle.Bundle,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["--replay", str(casting_data / "test"), "--json", str(out), "--no-progress"]) == 0
    summary = json.loads(out.read_text())["summary"]
    recorded = shipped.meta["metrics"]["test_all"]["int8"]
    assert summary["metrics"] == recorded
    assert summary["files"] == 715 and summary["errors"] == 0
    assert summary["warnings"] == []  # at its recorded accuracy, no escape: nothing to warn about


def test_replay_p_defect_matches_the_trainers_int8_path(casting_data: Path, shipped: bundle.Bundle,
                                                        tmp_path: Path) -> None:
    # The trainer scores decoded arrays in memory; replay decodes each file in threads.
    samples = list_labelled(casting_data / "test")[::40]
    folder = tmp_path / "sub"
    for s in samples:
        d = folder / s.path.parent.name
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(s.path, d / s.path.name)
    out = tmp_path / "r.json"
    assert main(["--replay", str(folder), "--json", str(out), "--workers", "2"]) == 0
    got = {Path(r["path"]).name: r["p_defect"] for r in json.loads(out.read_text())["images"]}
    loaded = load_samples(samples)
    expected = Classifier.from_bundle(shipped).predict(loaded.images)
    step = shipped.meta["output"]["scale"]  # one step of the output: of p, or of its logit

    def out(p: float) -> float:
        return math.log(p / (1 - p)) if shipped.meta["output"].get("represents") == "logit" else p

    for p, e in zip(loaded.paths, expected):
        assert abs(out(got[p.name]) - out(e)) <= step


def write_broken_folder(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    gray = part_image(1)
    cv2.imwrite(str(folder / "good.jpg"), gray)
    cv2.imwrite(str(folder / "alpha.png"), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA))
    cv2.imwrite(str(folder / "deep.png"), gray.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "wide.jpg"), cv2.resize(gray, (480, 300)))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image at all")
    ok, enc = cv2.imencode(".jpg", gray)
    (folder / "truncated.jpg").write_bytes(enc.tobytes()[: len(enc) // 3])
    cv2.imwrite(str(folder / "huge.png"), np.zeros((11000, 10000), np.uint8))
    (folder / "gone.jpg").symlink_to(folder / "does-not-exist.jpg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return {"empty.jpg": "zero-byte file", "text.jpg": "not a decodable image", "truncated.jpg": "truncated JPEG",
            "huge.png": "over 100 MP", "gone.jpg": "cannot read"}


def test_broken_files_are_listed_with_reasons_and_never_stop_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "mixed" / "nested"
    broken = write_broken_folder(folder)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    r = run_cli("--replay", str(tmp_path / "mixed"), "--json", str(out_json), "--csv", str(out_csv))
    assert r.returncode == 0, r.stderr
    data = json.loads(out_json.read_text())
    by_name = {Path(x["path"]).name: x for x in data["images"]}
    assert set(by_name) == {"good.jpg", "alpha.png", "deep.png", "wide.jpg", *broken}
    for name, reason in broken.items():
        assert reason in by_name[name]["error"] and by_name[name]["p_defect"] is None
        assert f"{name}: " in r.stdout  # listed in the printed summary
    for name in ("good.jpg", "alpha.png", "deep.png"):
        assert by_name[name]["error"] is None
    # alpha and 16-bit variants of one image are the same model input, so the same score
    assert by_name["alpha.png"]["p_defect"] == by_name["deep.png"]["p_defect"]
    s = data["summary"]
    assert (s["files"], s["scored"], s["errors"], s["labelled"]) == (9, 4, 5, False)
    assert s["accept"] + s["reject"] == 4 and "metrics" not in s
    rows = list(csv.DictReader(line for line in out_csv.read_text().splitlines() if not line.startswith("#")))
    assert len(rows) == 9 and {r["path"] for r in rows} == {x["path"] for x in data["images"]}
    assert "# errors: 5" in out_csv.read_text()


def test_permission_denied_is_reported(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions cannot deny a read (the broken-link case covers OSError)")
    folder = tmp_path / "p"
    folder.mkdir()
    cv2.imwrite(str(folder / "locked.jpg"), part_image(2))
    (folder / "locked.jpg").chmod(0)
    out = tmp_path / "r.json"
    assert main(["--replay", str(folder), "--json", str(out)]) == 0
    assert "Permission denied" in json.loads(out.read_text())["images"][0]["error"]


def _drawn_labelled(folder: Path, names: tuple[str, str]) -> Path:
    """6 drawn good and 6 drawn defective parts in class folders named `names` (ok, defect)."""
    for cls, defect in zip(names, (False, True), strict=True):
        (folder / cls).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(folder / cls / f"{i}.png"), part_image(10 + i, defect=defect))
    return folder


def test_labelled_folder_metrics_threshold_override_and_report(tmp_path: Path, shipped: bundle.Bundle) -> None:
    folder = _drawn_labelled(tmp_path / "lab", ("OK", "Defect"))
    out = tmp_path / "r.json"
    report = tmp_path / "rep"
    assert main(["--replay", str(folder), "--json", str(out), "--report", str(report)]) == 0
    data = json.loads(out.read_text())
    # what was decided: a guard fault is a reject whatever its p_defect (issue 17)
    p = np.array([x["p_defect"] if x["reason"] == "model" else 1.0 for x in data["images"]])
    y = np.array([1 if x["label"] == "def_front" else 0 for x in data["images"]])
    assert data["summary"]["metrics"] == summarize(y, p, shipped.threshold)
    assert (report / "confusion.png").is_file() and cv2.imread(str(report / "confusion.png")) is not None
    wrong = data["summary"]["metrics"]["false_accepts"] + data["summary"]["metrics"]["false_rejects"]
    assert (report / "misclassified.png").is_file() == (wrong > 0)
    # threshold override: 1.0 rejects only p_defect == 1.0; a tiny threshold rejects everything
    assert main(["--replay", str(folder), "--json", str(out), "--threshold", "0.001"]) == 0
    assert json.loads(out.read_text())["summary"]["reject"] == 12


def test_usage_and_bundle_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cases = [
        (["--replay", str(tmp_path / "empty")], "no image files found"),
        (["--replay", str(tmp_path / "missing")], "not a folder"),
        (["--replay", str(tmp_path), "--model", str(tmp_path / "nobundle")], "bundle folder not found"),
        (["--replay", str(tmp_path), "--threshold", "2"], "--threshold must be in (0, 1]"),
        (["--config", str(tmp_path / "nope.yaml")], "config file not found"),
    ]
    bad = tmp_path / "bad"
    shutil.copytree(SHIPPED, bad, ignore=shutil.ignore_patterns("figures", "checkpoints"))
    (bad / "model.tflite").write_bytes(b"garbage")
    cases.append((["--replay", str(tmp_path), "--model", str(bad)], "changed or corrupted"))
    for args, message in cases:
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_edge_never_imports_tensorflow(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.jpg"), part_image(3))
    code = (
        "import sys, pkgutil, importlib, edge\n"
        "from edge.cli import main\n"
        f"assert main(['--replay', {str(tmp_path)!r}, '--report', {str(tmp_path / 'rep')!r}]) == 0\n"
        "for m in pkgutil.walk_packages(edge.__path__, 'edge.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'matplotlib'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_labelled_folder_counts_and_reports_images_outside_the_class_folders(tmp_path: Path) -> None:
    # One subfolder named OK made the whole line folder labelled: the dated batch vanished.
    folder = tmp_path / "line"
    for rel in ("OK/a.png", "top.jpg", "2026-11-25/b.png", "2026-11-25/c.png"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / rel), part_image(len(rel)))
    out, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    r = run_cli("--replay", str(folder), "--json", str(out), "--csv", str(out_csv))
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())["summary"]
    assert (s["labelled"], s["files"], s["outside_class_folders"]) == (True, 1, 3)
    assert "# outside_class_folders: 3" in out_csv.read_text()
    assert "3 image file(s) outside the class folders were not scored" in r.stdout
    assert "3 image file(s) outside the class folders" in r.stderr and "2026-11-25" in r.stderr


def test_symlinked_batches_are_replayed(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    cv2.imwrite(str(batch / "a.png"), part_image(20))
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "monday").symlink_to(batch, target_is_directory=True)
    (tmp_path / "replay" / "monday-again").symlink_to(batch, target_is_directory=True)
    out = tmp_path / "r.json"
    assert main(["--replay", str(tmp_path / "replay"), "--json", str(out), "--no-progress"]) == 0
    assert [Path(x["path"]).relative_to(tmp_path).as_posix() for x in json.loads(out.read_text())["images"]] == [
        "replay/monday/a.png"]


def test_odd_depths_long_images_and_padded_jpegs_never_stop_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    gray = part_image(8)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(folder / "good.png"), gray)
    cv2.imwrite(str(folder / "bgr_f64.tiff"), bgr.astype(np.float64) / 255)
    cv2.imwrite(str(folder / "bgr_s16.tiff"), bgr.astype(np.int16))
    cv2.imwrite(str(folder / "bgr_s32.tiff"), bgr.astype(np.int32))
    cv2.imwrite(str(folder / "f32_255.tiff"), gray.astype(np.float32))
    cv2.imwrite(str(folder / "line.png"), np.full((1, 60000), 128, np.uint8))
    ok, enc = cv2.imencode(".jpg", gray)
    (folder / "padded.jpg").write_bytes(enc.tobytes() + bytes(100))
    (folder / "plain.jpg").write_bytes(enc.tobytes())
    out = tmp_path / "r.json"
    r = run_cli("--replay", str(folder), "--json", str(out))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    by_name = {Path(x["path"]).name: x for x in json.loads(out.read_text())["images"]}
    refused = {"bgr_s16.tiff": "unsupported pixel type int16", "bgr_s32.tiff": "unsupported pixel type int32",
               "f32_255.tiff": "outside [0, 1]", "line.png": "would be padded to 60000x60000"}
    for name, reason in refused.items():
        assert reason in by_name[name]["error"] and by_name[name]["p_defect"] is None, by_name[name]
        assert f"{name}: " in r.stdout
    # each scores as the file with the same pixels (a JPEG's are not the PNG's)
    for name, same in (("bgr_f64.tiff", "good.png"), ("padded.jpg", "plain.jpg")):
        assert by_name[name]["error"] is None and by_name[name]["p_defect"] == by_name[same]["p_defect"]


def test_file_names_that_are_not_utf8_reach_every_output(tmp_path: Path) -> None:
    # A Latin-1 name crashed the CSV writer, the printed summary and (segfault) the report.
    folder = os.fsdecode(os.fsencode(tmp_path) + b"/lab\xe9")
    ok = Path(folder) / "OK"
    ok.mkdir(parents=True)
    names = [b"caf\xe9.png", b"\xff\xfe.png", "ünï.png".encode()]
    for i, raw in enumerate(names):  # cv2.imwrite itself crashes on such a name: write the bytes
        (ok / os.fsdecode(raw)).write_bytes(cv2.imencode(".png", part_image(30 + i))[1].tobytes())
    (ok / os.fsdecode(b"bad\xe9.jpg")).write_text("not an image")
    out, out_csv, report = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / os.fsdecode(b"rep\xe9")
    # threshold 0.001 rejects every ok part: all are misclassified and drawn in the report
    r = subprocess.run([sys.executable, "-m", "edge.cli", "--replay", os.fsencode(folder), "--json", out,
                        "--csv", out_csv, "--report", report, "--threshold", "0.001"],
                       capture_output=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})  # as under a UTF-8 locale
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    stdout = r.stdout.decode("utf-8")  # strict: the summary is always valid text
    assert "lab\\xe9" in stdout and "bad\\xe9.jpg: not a decodable image" in stdout
    images = json.loads(out.read_text())["images"]  # exact names survive a JSON round trip
    assert sorted(os.fsencode(Path(x["path"]).name) for x in images) == sorted([*names, b"bad\xe9.jpg"])
    rows = list(csv.DictReader(line for line in out_csv.read_text(encoding="utf-8").splitlines()
                               if not line.startswith("#")))
    assert sorted(Path(row["path"]).name for row in rows) == sorted(
        ["caf\\xe9.png", "\\xff\\xfe.png", "ünï.png", "bad\\xe9.jpg"])
    for png in ("misclassified.png", "confusion.png"):  # cv2.imread would crash on this folder name too
        assert cv2.imdecode(np.frombuffer((report / png).read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None


@pytest.mark.parametrize("views", [1, 2])
def test_a_part_scoring_exactly_the_threshold_is_counted_as_the_reject_it_was(tmp_path: Path, shipped: bundle.Bundle,
                                                                              views: int) -> None:
    # p_defect is q/256; rounded to 6 decimals, q=1 became 0.003906 < 1/256: the part was decided
    # reject (p >= threshold) but counted as an accept and reported below its threshold. With more
    # than one view p_defect is the views' mean in logit space: any float, which must come back exact.
    model = tmp_path / "bundle"
    shutil.copytree(shipped.path, model, ignore=shutil.ignore_patterns("figures", "*.md", "*.keras", "checkpoints"))
    bundle.write_sidecar(model, dict(shipped.meta, views=views))  # the shipped model, as 1 or 2 views
    folder = _drawn_labelled(tmp_path / "lab", ("ok_front", "def_front"))
    out = tmp_path / "r.json"
    assert main(["--replay", str(folder), "--model", str(model), "--json", str(out)]) == 0
    step = shipped.meta["output"]["scale"]
    images = json.loads(out.read_text())["images"]
    logit = shipped.meta["output"].get("represents") == "logit"  # p = sigmoid(step x (q - zero)), else step x q

    def on_a_step(p: float) -> bool:
        v = math.log(p / (1 - p)) / step if logit else p / step
        return abs(v - round(v)) < (1e-6 if logit else 1e-12)

    on_steps = [on_a_step(x["p_defect"]) for x in images]
    assert all(on_steps) if views == 1 else not all(on_steps)  # the model's exact output, or a mean of views
    for t in sorted({x["p_defect"] for x in images if x["p_defect"] > 0}):  # each score as the threshold
        assert main(["--replay", str(folder), "--model", str(model), "--json", str(out), "--threshold", repr(t)]) == 0
        data = json.loads(out.read_text())
        for x in data["images"]:  # a guard fault is a reject whatever p_defect
            assert (x["decision"] == "reject") == (x["p_defect"] >= t or x["reason"] != "model"), (t, x)
        m = data["summary"]["metrics"]
        rejects = m["confusion"][0][1] + m["confusion"][1][1]
        assert rejects == data["summary"]["reject"] == sum(x["p_defect"] >= t or x["reason"] != "model"
                                                           for x in data["images"]), t


def test_misclassified_sheet_shows_escapes_first_and_says_how_many_it_shows(casting_data: Path,
                                                                           shipped: bundle.Bundle,
                                                                           tmp_path: Path) -> None:
    """50 tiles in file order showed 50 false rejects and none of the escapes after them (issue 18)."""
    samples = list_labelled(casting_data / "test")
    folder = tmp_path / "mislabelled"
    # Real defects filed as good (rejected: false rejects, listed first), real good parts filed as defects
    # (accepted: escapes, listed last).
    for cls, picked in (("ok_front", [s for s in samples if s.label == 1][:60]),
                        ("def_front", [s for s in samples if s.label == 0][:3])):
        (folder / cls).mkdir(parents=True)
        for s in picked:
            shutil.copy(s.path, folder / cls / s.path.name)
    out, report = tmp_path / "r.json", tmp_path / "rep"
    r = run_cli("--replay", str(folder), "--json", str(out), "--report", str(report), "--no-progress")
    assert r.returncode == 0, r.stderr
    images = json.loads(out.read_text())["images"]
    wrong = [x for x in images if (x["decision"] == "reject") != (x["label"] == "def_front")]
    escapes = [x for x in wrong if x["label"] == "def_front"]
    faults = [x for x in wrong if x["label"] == "ok_front" and x["reason"] != "model"]
    rejects = [x for x in wrong if x["label"] == "ok_front" and x["reason"] == "model"]
    assert len(escapes) == 3 and len(wrong) > 50
    warning = "3 defective part(s) accepted (escapes) of 3 defects"
    assert warning in r.stdout and warning in r.stderr
    sheet = cv2.imread(str(report / "misclassified.png"), cv2.IMREAD_COLOR)
    tile, head, cols = 200, 30, 5
    assert sheet.shape == (head + 10 * (tile + 44), cols * tile, 3)  # 50 tiles, not 63
    size = tuple(shipped.meta["image_size"])
    for k, x in enumerate(escapes + faults + rejects[: 50 - len(escapes) - len(faults)]):
        row, col = divmod(k, cols)
        y0, x0 = head + row * (tile + 44), col * tile
        expected = cv2.cvtColor(cv2.resize(load_image(Path(x["path"]), size), (tile, tile)), cv2.COLOR_GRAY2BGR)
        assert np.array_equal(sheet[y0: y0 + tile, x0: x0 + tile], expected), (k, x["path"])
    text = (f"showing 50 of {len(wrong)} misclassified; escapes first (escapes 3, guard faults {len(faults)}, "
            f"false rejects {len(rejects)})")
    band = np.full((head, cols * tile, 3), 255, np.uint8)
    cv2.putText(band, text, (6, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    assert np.array_equal(sheet[:head], band)  # the count is drawn on the sheet


def test_a_replay_far_below_the_bundles_record_warns_and_min_accuracy_exits_3(tmp_path: Path,
                                                                              shipped: bundle.Bundle) -> None:
    """A bundle at 50% accuracy replayed with exit 0 and not a word (issue 18)."""
    folder = _drawn_labelled(tmp_path / "lab", ("ok_front", "def_front"))  # drawn parts: the guard rejects all
    out, report = tmp_path / "r.json", tmp_path / "rep"
    r = run_cli("--replay", str(folder), "--json", str(out), "--report", str(report), "--no-progress")
    assert r.returncode == 0, r.stderr  # without --min-accuracy a warning, not a failure
    recorded = shipped.meta["metrics"]["test_all"]["int8"]["accuracy"]
    warning = (f"accuracy 50.00% on 12 images is {(recorded - 0.5) * 100:.1f} points below the bundle's recorded "
               f"test accuracy {recorded * 100:.2f}%")
    assert f"WARNING: {warning}" in r.stdout and f"WARNING edge-inspect: {warning}" in r.stderr
    assert json.loads(out.read_text())["summary"]["warnings"][0].startswith(warning)
    confusion = cv2.imread(str(report / "confusion.png"), cv2.IMREAD_COLOR)
    assert (confusion[-80:, :, 2] > confusion[-80:, :, 0] + 100).any()  # red warning text under the matrix
    r = run_cli("--replay", str(folder), "--min-accuracy", "0.9", "--json", str(out), "--no-progress")
    assert r.returncode == 3 and "accuracy 50.00% is below --min-accuracy 90.00%" in r.stderr, r.stderr
    assert out.is_file()  # outputs are written before the verdict
    assert run_cli("--replay", str(folder), "--min-accuracy", "0.5", "--no-progress").returncode == 0
    (tmp_path / "flat").mkdir()
    cv2.imwrite(str(tmp_path / "flat" / "a.png"), part_image(1))
    for args, message in ((["--min-accuracy", "0.9", "--replay", str(tmp_path / "flat")], "not a labelled folder"),
                          (["--min-accuracy", "95", "--replay", str(folder)], "must be in (0, 1]")):
        r = run_cli(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
