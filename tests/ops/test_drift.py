from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from edge.ops.drift import DriftSettings, DriftWatch, crop_stats
from tests.conftest import part_image

STATS = {"brightness": {"mean": 144.0, "std": 8.0}, "contrast": {"mean": 60.0, "std": 3.4}}


def crop(rng: np.random.Generator, level: float, contrast: float = 60.0) -> np.ndarray:
    return np.clip(rng.normal(level, contrast, (64, 64)), 0, 255).astype(np.uint8)


def feed(w: DriftWatch, rng: np.random.Generator, n: int, level: float = 144.0, size: float = 300.0,
         reject_p: float = 0.1) -> None:
    for _ in range(n):
        rej = rng.random() < reject_p
        p = float(rng.uniform(0.6, 1.0) if rej else rng.uniform(0.0, 0.2))
        w.observe(crop(rng, level + rng.normal(0, 4)), size + rng.normal(0, 3),
                  {"decision": "reject" if rej else "accept", "p_defect": p})


def test_a_steady_line_raises_nothing() -> None:
    rng = np.random.default_rng(0)
    w = DriftWatch(DriftSettings(window=50, baseline_parts=100), STATS)
    feed(w, rng, 600)
    assert w.state() == dict.fromkeys(DriftWatch.SIGNALS, False)


def test_darker_lighting_is_flagged_and_cleared(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    w = DriftWatch(DriftSettings(window=50, baseline_parts=100), STATS)
    feed(w, rng, 150)
    with caplog.at_level(logging.WARNING, logger="edge.ops.drift"):
        feed(w, rng, 60, level=115.0)  # lamp ageing: -20%
    assert w.state()["brightness"] and not w.state()["part_size"]
    assert any(r.getMessage().startswith("drift:") and r.__dict__["signal"] == "brightness" for r in caplog.records)
    feed(w, rng, 60)
    assert not w.state()["brightness"]


def test_camera_moved_and_reject_rate_jump_against_the_lines_own_baseline() -> None:
    rng = np.random.default_rng(2)
    w = DriftWatch(DriftSettings(window=50, baseline_parts=100), STATS)
    feed(w, rng, 100, size=300.0, reject_p=0.05)  # baseline learned here
    feed(w, rng, 60, size=330.0, reject_p=0.05)  # camera 10% closer
    assert w.state()["part_size"] and not w.state()["reject_rate"]
    feed(w, rng, 60, size=300.0, reject_p=0.5)  # a bad batch, or a model gone wrong
    assert w.state()["reject_rate"] and w.state()["p_defect"] and not w.state()["part_size"]


def test_faults_are_not_image_statistics() -> None:
    w = DriftWatch(DriftSettings(window=10, baseline_parts=10), STATS)
    for _ in range(50):
        w.observe(None, None, {"decision": "reject", "p_defect": None, "reason": "fault:no_part"})
    assert all(len(s.values) == 0 for s in w.stats.values())


def test_old_bundles_without_per_image_stats_use_their_pixel_mean() -> None:
    w = DriftWatch(DriftSettings(), {"fit_mean": 143.9, "fit_std": 60.8})
    assert w.stats["brightness"].mean == 143.9 and w.stats["contrast"].mean == 60.8


def part_crop(rng: np.random.Generator, sigma: float = 0.0) -> np.ndarray:
    gain = rng.uniform(0.9, 1.1)  # parts and lighting vary a little, as on a line
    img = part_image(int(rng.integers(1000)), size=128) * gain + rng.normal(0, 3, (128, 128))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma else img


def test_a_lens_drifting_out_of_focus_is_flagged_by_sharpness_alone() -> None:
    rng = np.random.default_rng(3)
    w = DriftWatch(DriftSettings(window=40, baseline_parts=80), None)  # an older bundle: learned on the line
    ok = {"decision": "accept", "p_defect": 0.05}
    for _ in range(120):
        w.observe(part_crop(rng), 300.0, ok)
    assert not any(w.state().values())
    for _ in range(40):
        w.observe(part_crop(rng, sigma=1.0), 300.0, ok)
    assert w.state()["sharpness"] and not w.state()["brightness"] and not w.state()["contrast"]


def test_sharpness_baseline_comes_from_the_bundle_when_recorded() -> None:
    rng = np.random.default_rng(4)
    crops = [part_crop(rng) for _ in range(50)]
    values = np.array([crop_stats(c)["sharpness"] for c in crops])
    w = DriftWatch(DriftSettings(window=20, baseline_parts=1000),
                   {**STATS, "sharpness": {"mean": float(values.mean()) * 2, "std": float(values.std())}})
    for c in crops[:20]:  # parts half as crisp as training: flagged without any line baseline
        w.observe(c, 300.0, {"decision": "accept", "p_defect": 0.05})
    assert w.state()["sharpness"]


def test_a_reloaded_model_gets_its_own_baselines_and_keeps_the_cameras() -> None:
    rng = np.random.default_rng(5)
    w = DriftWatch(DriftSettings(window=50, baseline_parts=100), STATS)
    feed(w, rng, 100, reject_p=0.05)  # the old model's baselines, learned on the line
    feed(w, rng, 60, reject_p=0.5)
    assert w.state()["reject_rate"] and w.state()["p_defect"]
    size = (w.stats["part_size"].mean, w.stats["part_size"].std)
    new = {"brightness": {"mean": 150.0, "std": 9.0}, "contrast": {"mean": 61.0, "std": 3.0}}  # no sharpness
    w.model_changed(new)
    assert not w.state()["reject_rate"] and not w.state()["p_defect"]  # nothing to compare with yet
    assert w.stats["p_defect"].mean is None and len(w.stats["reject_rate"].values) == 0
    assert (w.stats["brightness"].mean, w.stats["brightness"].std) == (150.0, 9.0)
    assert w.stats["sharpness"].mean is None  # not in the new bundle: learned again on the line
    assert (w.stats["part_size"].mean, w.stats["part_size"].std) == size and len(w.stats["part_size"].values) == 50
    feed(w, rng, 100, reject_p=0.5)  # the new model rejects half: that is its baseline now
    assert w.stats["reject_rate"].mean is not None and w.stats["reject_rate"].mean > 0.3
    assert not w.state()["reject_rate"]


def test_a_window_mean_hovering_at_the_limit_does_not_flap(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(6)
    w = DriftWatch(DriftSettings(window=50, baseline_parts=100), STATS)  # brightness limit: 2 x 8 = 16
    feed(w, rng, 100)
    with caplog.at_level(logging.INFO, logger="edge.ops.drift"):
        feed(w, rng, 60, level=144.0 - 19)  # over the limit
        assert w.state()["brightness"]
        feed(w, rng, 150, level=144.0 - 14.5)  # back under the limit, but not by much
        assert w.state()["brightness"]
        feed(w, rng, 60)
    assert not w.state()["brightness"]
    changes = [r.getMessage() for r in caplog.records if r.__dict__.get("signal") == "brightness"]
    assert len(changes) == 2 and changes[1] == "drift cleared", changes
