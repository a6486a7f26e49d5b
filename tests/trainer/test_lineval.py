"""The view rule (trainer.lineval): every candidate a bundle may hold, judged alike, the cheapest chosen."""

from __future__ import annotations

import time

import numpy as np

from edge.inference import bundle as bundle_fmt
from edge.inference.guard import Guard, GuardLimits
from edge.vision.partview import InputSpec
from tests.conftest import part_image
from trainer import lineval
from trainer.threshold import parse_policy


def test_candidates_are_each_view_count_and_from_two_views_both_ways_of_combining_them() -> None:
    assert lineval.candidates_of(None) == [(1, "mean"), (2, "mean"), (2, "max"), (4, "mean"), (4, "max"),
                                           (8, "mean"), (8, "max")]
    assert lineval.candidates_of(4) == [(4, "mean")]  # --views fixes the count; the mean, as before
    assert lineval.candidate_key(4) == "4" and lineval.candidate_key(4, "max") == "4 max"


def test_the_rule_tries_every_candidate_and_takes_the_cheapest_within_the_budget() -> None:
    shipped = bundle_fmt.load(bundle_fmt.DEFAULT_BUNDLE)
    spec = InputSpec.from_meta(shipped.meta)
    guard = Guard(GuardLimits.from_meta(shipped.meta))
    labels = np.array([0, 1] * 4)
    images = np.stack([part_image(i, defect=bool(y)) for i, y in enumerate(labels)])
    rule = lineval.choose_views_and_threshold(shipped.model_path.read_bytes(), spec, guard, images, labels, None,
                                              parse_policy("cost:20"), None)
    keys = ["1", "2", "2 max", "4", "4 max", "8", "8 max"]
    assert list(rule["candidates"]) == keys
    eligible = [k for k in keys if rule["candidates"][k]["within_budget"]] or ["1"]
    best = min(eligible, key=lambda k: (rule["candidates"][k]["summed_cost"], int(k.split()[0]), " max" in k))
    assert rule["key"] == best
    assert (rule["views"], rule["aggregate"]) == (int(best.split()[0]), "max" if " max" in best else "mean")
    assert rule["threshold"] == rule["candidates"][best]["threshold"]
    assert all(rule["candidates"][f"{v} max"]["latency_ms_1_thread"] > 0 for v in (2, 4, 8))


def test_latency_is_the_least_disturbed_rounds_median_over_spread_crops() -> None:
    images = np.stack([part_image(i) for i in range(7)])
    picked = lineval.latency_crops(images, 4)
    assert np.array_equal(picked, images[[0, 2, 4, 6]])
    assert len(lineval.latency_crops(images, 20)) == 7  # never more crops than the set has

    class Timed:  # a verdict whose time is known: rounds 1 and 3 disturbed, round 2 not
        def __init__(self) -> None:
            self.calls = 0

        def judge(self, img: np.ndarray) -> None:
            self.calls += 1
            round_ = (self.calls - 3 - 1) // 3  # 3 warm-up calls, then rounds of 3 images
            slow = 0.02 if round_ in (0, 2) else 0.0
            end = time.perf_counter() + 0.003 + slow + 0.001 * int(img[0, 0] % 3)
            while time.perf_counter() < end:
                pass

    ms = lineval.judge_latency_ms(Timed(), images[:3], rounds=3)
    assert 3.0 <= ms < 10.0  # the quiet round's median, not a disturbed one's (over 23 ms)
