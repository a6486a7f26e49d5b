"""The view rule (trainer.lineval): every candidate a bundle may hold, judged alike, the cheapest chosen."""

from __future__ import annotations

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
                                              parse_policy("cost:20"), None, images[0])
    keys = ["1", "2", "2 max", "4", "4 max", "8", "8 max"]
    assert list(rule["candidates"]) == keys
    eligible = [k for k in keys if rule["candidates"][k]["within_budget"]] or ["1"]
    best = min(eligible, key=lambda k: (rule["candidates"][k]["summed_cost"], int(k.split()[0]), " max" in k))
    assert rule["key"] == best
    assert (rule["views"], rule["aggregate"]) == (int(best.split()[0]), "max" if " max" in best else "mean")
    assert rule["threshold"] == rule["candidates"][best]["threshold"]
    assert all(rule["candidates"][f"{v} max"]["latency_ms_1_thread"] > 0 for v in (2, 4, 8))
