import re

import numpy as np
import pytest

from trainer.threshold import (
    Policy,
    PolicyError,
    adapted_threshold,
    choose,
    evidence,
    keep_old_line,
    lower_by,
    parse_policy,
    parse_rule,
)


def test_parse_policy_accepts_cost_and_recall_and_names_bad_input() -> None:
    assert parse_policy("cost:20") == Policy("cost", 20.0)
    assert parse_policy("recall:0.999") == Policy("recall", 0.999)
    for bad in ("cost:-1", "recall:1.5", "precision:0.9", "cost:abc", "cost:inf", "cost:nan", "recall:nan"):
        with pytest.raises(PolicyError, match=bad):
            parse_policy(bad)


def test_cost_policy_takes_middle_of_error_free_gap() -> None:
    labels = np.array([0, 0, 1, 1])
    p = np.array([10, 20, 100, 120]) / 256
    t = choose(labels, p, Policy("cost", 20))
    assert 20 / 256 < t <= 100 / 256
    assert abs(t - 60 / 256) <= 1 / 256


def test_cost_policy_trades_false_rejects_for_escapes() -> None:
    # One defect scores below two ok parts: cost 20 rejects them all, cost 0.1 does not.
    labels = np.array([0, 0, 1, 1, 1])
    p = np.array([0.40, 0.45, 0.30, 0.90, 0.95])
    assert choose(labels, p, Policy("cost", 20)) <= 0.30
    assert choose(labels, p, Policy("cost", 0.1)) > 0.45


def test_recall_policy_returns_highest_threshold_meeting_target() -> None:
    labels = np.array([0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.5, 0.6, 0.7])
    assert choose(labels, p, Policy("recall", 1.0)) == pytest.approx(np.floor(0.2 * 256) / 256)
    assert choose(labels, p, Policy("recall", 0.75)) == pytest.approx(np.floor(0.5 * 256) / 256)


def test_evidence_names_the_images_that_set_the_threshold() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 1])
    p = np.array([0.99, 0.12, 0.98, 0.05, 0.30, 0.01, 0.45])
    names = [f"img{i}" for i in range(7)]
    t = choose(labels, p, parse_policy("cost:20"))
    ev = evidence(labels, p, names, t, n=2)
    assert ev["lowest_defects"] == [{"image": "img1", "p_defect": 0.12}, {"image": "img6", "p_defect": 0.45}]
    assert ev["highest_good"] == [{"image": "img4", "p_defect": 0.3}, {"image": "img3", "p_defect": 0.05}]
    assert ev["good_at_or_above_lowest_defect"] == 1  # img4 is the one good part the threshold must reject
    assert t <= 0.12


def test_keep_old_line_takes_the_new_lines_choice_among_thresholds_that_keep_the_old_lines_bar() -> None:
    # New line (out of fold): a hard defect at 0.05 pulls cost:20 below it.
    new_y, new_p = np.array([0, 0, 1, 1]), np.array([0.02, 0.10, 0.05, 0.90])
    # Old line: good parts at 0.06 and 0.07 that the base decided right (bar: 0 escapes, 0 errors).
    old_y, old_p = np.array([0, 0, 1]), np.array([0.06, 0.07, 0.80])
    union = choose(np.r_[new_y, old_y], np.r_[new_p, old_p], Policy("cost", 20))
    assert union <= 0.05  # the union rule rejects the old line's good parts for the new line's defect
    t = keep_old_line(new_y, new_p, old_y, old_p, (0, 0), Policy("cost", 20))
    assert t is not None and 0.10 < t <= 0.80  # the old line keeps its bar, the new line's best beyond it
    assert (new_p[new_y == 1] < t).sum() == 1  # the hard defect is accepted: the report shows it
    # a bar that allows the two errors lets the threshold go back under the hard defect
    t2 = keep_old_line(new_y, new_p, old_y, old_p, (0, 2), Policy("cost", 20))
    assert t2 is not None and 0.02 < t2 <= 0.05
    # no threshold keeps an impossible bar: None, the caller falls back
    assert keep_old_line(new_y, new_p, np.array([0, 1]), np.array([0.9, 0.1]), (0, 0), Policy("cost", 20)) is None


def test_adapted_threshold_rules_and_their_margin_in_logit_space() -> None:
    new_y, new_p = np.array([0, 0, 1, 1]), np.array([0.02, 0.10, 0.05, 0.90])
    old_y, old_p = np.array([0, 0, 1]), np.array([0.06, 0.07, 0.80])
    policy = Policy("cost", 20)
    keep = adapted_threshold("keep-old-line", new_y, new_p, old_y, old_p, (0, 0), policy)
    assert keep.kept is True and keep.threshold == keep.before_margin == keep_old_line(new_y, new_p, old_y, old_p,
                                                                                       (0, 0), policy)
    union = adapted_threshold("union", new_y, new_p, old_y, old_p, (0, 0), policy)
    assert union.kept is None and union.threshold == choose(np.r_[new_y, old_y], np.r_[new_p, old_p], policy)
    low = adapted_threshold("margin:2", new_y, new_p, old_y, old_p, (0, 0), policy)
    assert low.before_margin == keep.threshold and low.kept is True
    logit = np.log(low.threshold / (1 - low.threshold))
    assert logit == pytest.approx(np.log(keep.threshold / (1 - keep.threshold)) - 2)
    # no threshold keeps an impossible bar: the fallback (union) is lowered too
    none = adapted_threshold("margin:1", new_y, new_p, old_y, np.array([0.9, 0.9, 0.1]), (0, 0), policy)
    assert none.kept is False and none.threshold == pytest.approx(lower_by(none.before_margin, 1.0))
    assert adapted_threshold("margin:0", new_y, new_p, old_y, old_p, (0, 0), policy).threshold == keep.threshold


@pytest.mark.parametrize("bad", ["margin", "margin:", "margin:-1", "margin:11", "margin:nan", "margin:x", "keep",
                                 "union:1", "Union"])
def test_parse_rule_names_a_bad_rule(bad: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(repr(bad))):
        parse_rule(bad)
    assert parse_rule("margin:1.5") == ("margin", 1.5) and parse_rule("union") == ("union", 0.0)


def test_a_logit_output_chooses_between_scores_that_one_probability_step_would_tie() -> None:
    # Defects at p 0.0030, good parts at 0.0020: both below 1/256, one level of a uint8 probability.
    labels = np.array([0, 0, 0, 1, 1])
    p = np.array([0.0018, 0.0019, 0.0020, 0.0030, 0.0031])
    on_k256 = choose(labels, p, Policy("cost", 20))
    assert (p[labels == 1] < on_k256).all()  # on k/256 every threshold accepts both defects
    t = choose(labels, p, Policy("cost", 20), "logit")
    assert 0.0020 < t <= 0.0030  # separates them, in the middle of the gap in log-odds
    assert abs(np.log(t / (1 - t)) - np.log(0.0024496)) < 1 / 32 + 1e-9


def test_the_logit_grid_is_ascending_fine_near_the_operating_point_and_unknown_outputs_are_refused() -> None:
    from edge.inference.policy import threshold_grid  # noqa: PLC0415

    k256, fine = threshold_grid("p_defect"), threshold_grid("logit")
    assert (np.diff(k256) > 0).all() and (np.diff(fine) > 0).all() and fine[-1] == 1.0 == k256[-1]
    near = (fine > 3 / 256) & (fine < 5 / 256)  # between the two uint8 levels around 0.0156
    assert near.sum() >= 15 and fine[0] < 1e-5
    with pytest.raises(PolicyError, match="'probability'"):
        choose(np.array([0, 1]), np.array([0.1, 0.9]), Policy("cost", 20), "probability")


def test_keep_old_line_on_a_logit_grid_keeps_the_bar_between_fine_scores() -> None:
    old_y, old_p = np.array([0, 0, 1]), np.array([0.0010, 0.0012, 0.0030])
    new_y, new_p = np.array([0, 1]), np.array([0.0011, 0.0025])
    t = keep_old_line(new_y, new_p, old_y, old_p, (0, 0), Policy("cost", 20), "logit")
    assert t is not None and 0.0012 < t <= 0.0025
    assert keep_old_line(new_y, new_p, old_y, old_p, (0, 0), Policy("cost", 20)) is None  # k/256 cannot
