"""Champion/challenger comparison on validation (the bundles themselves: see test_fit)."""

from pathlib import Path

import numpy as np
import pytest

from edge.inference import bundle as bundle_fmt
from edge.inference.policy import threshold_grid
from edge.vision.partview import output_of
from trainer.cli import main
from trainer.compare import cost, paired_bootstrap
from trainer.threshold import parse_policy

COST20 = parse_policy("cost:20")


def _scores(seed: int, overlap: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 200 + [1] * 200)
    p = np.where(labels == 1, rng.uniform(0.6, 1.0, 400), rng.uniform(0.0, 0.4, 400))
    if overlap:  # a few good parts score like defects: any threshold rejects them
        p[:6] = 0.8
    return labels, p


def test_cost_counts_escapes_at_the_ratio_and_rejects_once() -> None:
    labels = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.6, 0.1, 0.3])
    assert cost(labels, p, 0.5, 20) == (21, 1, 1)
    assert cost(labels, p, 0.15, 20) == (2, 0, 2)


def test_identical_models_always_tie() -> None:
    labels, p = _scores(0, overlap=True)
    r = paired_bootstrap(labels, (p, p), (p, p), (COST20, COST20), 20, 200, seed=1)
    assert r["tie"] == 1.0 and r["b_lower"] == r["b_higher"] == 0.0
    assert r["a"] == r["b"] and r["a"]["median"] > 0


def test_a_model_with_good_parts_among_the_defects_loses_nearly_always() -> None:
    labels, clean = _scores(0, overlap=False)
    _, dirty = _scores(0, overlap=True)
    r = paired_bootstrap(labels, (clean, dirty), (clean, dirty), (COST20, COST20), 20, 300, seed=2)
    assert r["b_higher"] > 0.95 and r["a"]["p95"] == 0.0
    # Measured on other scores (a refocused set) at the threshold chosen on the clean ones.
    r = paired_bootstrap(labels, (clean, clean), (clean, dirty), (COST20, COST20), 20, 300, seed=2)
    assert r["b_higher"] > 0.95


def test_a_lone_low_pinhole_escapes_only_when_counted_on_images_the_threshold_never_saw() -> None:
    # One defect scores among the good parts, like the validation pinholes that set the shipped
    # thresholds. Counted on the resample it was chosen on, a threshold never lets it through
    # (it is below it whenever it is drawn); counted on the left-out images it escapes in the
    # ~37% of resamples that leave it out, which the in-sample figure cannot show.
    labels, p = _scores(3, overlap=False)
    p[200] = 0.2  # a defect (index 200) scoring like a good part
    r = paired_bootstrap(labels, (p, p), (p, p), (COST20, COST20), 20, 400, seed=4)
    assert r["a"]["p95"] <= 200  # in-sample: at most the good parts rejected to keep it
    oob = r["out_of_bag"]
    assert 0.25 < oob["a_escape_rate"] == oob["b_escape_rate"] < 0.5 and oob["tie"] == 1.0
    assert oob["a"]["p95"] > 20  # an escape (x20, scaled to the validation size) in the upper tail
    clean_labels, clean = _scores(3, overlap=False)
    assert paired_bootstrap(clean_labels, (clean, clean), (clean, clean), (COST20, COST20), 20, 200,
                            seed=4)["out_of_bag"]["a_escape_rate"] == 0.0  # separable: nothing escapes


@pytest.mark.parametrize("bad", [["--cost-ratio", "inf"], ["--cost-ratio", "nan"], ["--json", "missing/x.json"]])
def test_bad_options_exit_2_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             bad: list[str]) -> None:
    """Refused up front, not after decoding and scoring every validation image (the bundles here
    do not even exist: the option is what is named)."""
    if bad[0] == "--json":
        bad = [bad[0], str(tmp_path / bad[1])]
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(tmp_path), *bad]) == 2
    err = capsys.readouterr().err
    assert bad[0] in err and "Traceback" not in err


def _small_split(src: Path, dest: Path, limit: int) -> Path:
    """A copy of a shipped bundle whose recorded split uses only the first `limit` images per class."""
    import json
    import shutil

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("figures", "checkpoints", "model.keras"))
    meta = json.loads((dest / "model.json").read_text())
    meta["training"]["options"].update(limit=limit, split_seed=123, val_fraction=0.2)
    meta["training"]["data"].pop("validation_fingerprint", None)
    bundle_fmt.write_sidecar(dest, meta)  # re-sealed: a deliberate change
    return dest


def test_line_rule_scores_both_bundles_over_the_same_sets_and_gives_the_verdict_of_their_costs(
        tmp_path: Path, casting_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from edge.inference.bundle import DEFAULT_BUNDLE

    a = _small_split(DEFAULT_BUNDLE.parent / "casting-cnn-crisp", tmp_path / "a", 10)
    b = _small_split(DEFAULT_BUNDLE, tmp_path / "b", 10)
    out = tmp_path / "rule.json"
    assert main(["compare", str(a), str(b), "--data", str(casting_data), "--line-rule", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    n = res["validation"]["images"]
    assert n == 4  # 2 per class of the first 10
    for m, path in zip(res["models"].values(), (a, b), strict=True):
        assert len(m["sets"]) == 15 and all(s["n"] == n for s in m["sets"].values())
        assert m["summed_cost"] == sum(s["cost"] for s in m["sets"].values())
        grid = threshold_grid(output_of(bundle_fmt.load(path).meta))  # k/256, or the logit's finer grid
        assert np.isclose(grid, m["threshold_by_rule"], rtol=0, atol=1e-12).any()
    ca, cb = (res["models"][k]["summed_cost"] for k in ("champion", "challenger"))
    assert res["verdict"] == ("challenger replaces champion" if cb < ca else "champion stays")
    assert res["verdict"] in capsys.readouterr().out


def test_compare_on_a_new_lines_labelled_folder_judges_every_image_at_each_bundles_threshold(
        casting_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A labelled folder without train/ (what edge-label makes): both bundles on all of it (issue 20)."""
    import json
    import shutil

    from edge.inference import bundle as bundle_fmt
    from edge.inference.judge import Judge, reject_scores
    from edge.offline.dataset import list_labelled, load_samples
    from tests.conftest import ROOT

    line = tmp_path / "line-3"
    for cls, n in (("def_front", 6), ("ok_front", 5)):
        (line / cls).mkdir(parents=True)
        for p in sorted((casting_data / "test" / cls).glob("*.jpeg"))[:n]:
            shutil.copy(p, line / cls / p.name)
    champion, challenger = ROOT / "models" / "casting-cnn", ROOT / "models" / "casting-cnn-crisp"
    out = tmp_path / "cmp.json"
    assert main(["compare", str(champion), str(challenger), "--data", str(line), "--resamples", "50",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"labelled folder {line} (every image; neither bundle may have trained on it): 11 images (6 defects)" \
        in printed
    res = json.loads(out.read_text())
    loaded = load_samples(list_labelled(line))
    for role, folder in (("champion", champion), ("challenger", challenger)):
        b = bundle_fmt.load(folder)
        p = reject_scores(Judge.from_bundle(b).judge_all(loaded.images))
        want = cost(loaded.labels, p, b.threshold, 20)
        got = res["models"][role]
        assert (got["cost"], got["false_accepts"], got["false_rejects"]) == want
