"""Choosing a tier's threshold (Jung et al. 2025), checked by hand and against scipy's binomtest."""

import numpy as np
import pytest
from scipy.stats import binomtest

from judging.thresholds import agreement_p_value, choose_threshold, items_needed


def test_items_needed_is_the_least_all_agreeing_count_that_passes():
    # 0.9**21 = 0.109 > 0.1, 0.9**22 = 0.098 <= 0.1
    assert items_needed(0.9, 0.1) == 22
    # 0.95**58 = 0.0510 > 0.05, 0.95**59 = 0.0485
    assert items_needed(0.95, 0.05) == 59
    for target, risk in [(0.9, 0.1), (0.8, 0.05), (0.99, 0.2)]:
        n = items_needed(target, risk)
        assert binomtest(n, n, target, alternative="greater").pvalue <= risk
        assert binomtest(n - 1, n - 1, target, alternative="greater").pvalue > risk


def test_p_value_matches_scipy_binomtest():
    for k, n, t in [(38, 40, 0.9), (30, 30, 0.9), (40, 50, 0.9), (0, 5, 0.5)]:
        assert agreement_p_value(k, n, t) == pytest.approx(binomtest(k, n, t, alternative="greater").pvalue)


def test_it_stops_at_the_first_threshold_that_fails():
    # 30 sure items, all agreeing; 20 unsure ones, half agreeing.
    certainty = [0.99] * 30 + [0.7] * 20
    agrees = [True] * 30 + [True] * 10 + [False] * 10
    got = choose_threshold(certainty, agrees, target=0.9, risk=0.1)
    assert got.threshold == 0.99
    assert got.n == 30 and got.agreement == 1.0
    assert got.p_value == pytest.approx(0.9**30)
    # Clopper-Pearson with k = n: lower bound (0.025)**(1/n), upper 1
    assert got.interval[0] == pytest.approx(0.025 ** (1 / 30)) and got.interval[1] == pytest.approx(1.0)
    # and the test at 0.7 indeed does not reject: 40 of 50 at target 0.9
    assert binomtest(40, 50, 0.9, alternative="greater").pvalue > 0.1
    assert got.decides and got.reason == "" and got.n_labelled == 50


def test_explicit_candidates_against_binomtest():
    certainty = [0.95] * 60 + [0.8] * 40
    agrees = [True] * 58 + [False] * 2 + [True] * 30 + [False] * 10
    got = choose_threshold(certainty, agrees, target=0.9, risk=0.1, candidates=[0.95, 0.8])
    assert binomtest(58, 60, 0.9, alternative="greater").pvalue <= 0.1
    assert binomtest(88, 100, 0.9, alternative="greater").pvalue > 0.1
    assert got.threshold == 0.95 and got.n == 60 and got.agreement == pytest.approx(58 / 60)
    assert got.p_value == pytest.approx(binomtest(58, 60, 0.9, alternative="greater").pvalue)
    ci = binomtest(58, 60).proportion_ci(method="exact")
    assert got.interval == pytest.approx((ci.low, ci.high))


def test_all_agreeing_items_are_all_decided():
    certainty = np.linspace(0.5, 1.0, 100)
    got = choose_threshold(certainty, [True] * 100, target=0.9, risk=0.1)
    assert got.threshold == 0.5 and got.n == 100 and got.agreement == 1.0


def test_no_labels_decides_nothing_and_says_why():
    got = choose_threshold([], [], target=0.9, risk=0.1)
    assert got.threshold is None and not got.decides and got.n == 0 and got.agreement is None
    assert "No SME-labelled items" in got.reason and "22" in got.reason


def test_too_few_labels_decides_nothing_and_says_how_many_are_needed():
    got = choose_threshold([0.99] * 21, [True] * 21, target=0.9, risk=0.1)
    assert got.threshold is None and got.n_labelled == 21
    assert "Only 21" in got.reason and "at least 22" in got.reason
    assert choose_threshold([0.99] * 22, [True] * 22, target=0.9, risk=0.1).threshold == 0.99


def test_a_judge_that_disagrees_at_the_top_decides_nothing():
    got = choose_threshold([0.99] * 25 + [0.6] * 100, [True] * 20 + [False] * 5 + [True] * 100, target=0.9, risk=0.1)
    # fixed-sequence: the scan stops at 0.99, never reaching the agreeing items below
    assert got.threshold is None
    assert "20 of 25" in got.reason


def test_order_of_items_does_not_matter():
    rng = np.random.default_rng(3)
    certainty = rng.uniform(0.5, 1.0, 300)
    agrees = rng.uniform(size=300) < certainty
    perm = rng.permutation(300)
    a = choose_threshold(certainty, agrees, target=0.85, risk=0.1)
    b = choose_threshold(certainty[perm], agrees[perm], target=0.85, risk=0.1)
    assert a == b


def _ramp():
    # Agreement falls as certainty falls: 100 % at the top, about 60 % at the bottom.
    certainty = np.repeat(np.round(np.linspace(1.0, 0.5, 11), 3), 40)
    agrees = []
    for i in range(11):
        wrong = i * 16 // 10  # 0, 1, 3, 4, 6, ...
        agrees += [False] * wrong + [True] * (40 - wrong)
    return certainty, np.array(agrees)


def test_a_stricter_target_or_a_smaller_risk_never_lowers_the_threshold():
    certainty, agrees = _ramp()
    by_target = [choose_threshold(certainty, agrees, target=t, risk=0.1).threshold for t in (0.8, 0.85, 0.9, 0.95)]
    by_risk = [choose_threshold(certainty, agrees, target=0.9, risk=r).threshold for r in (0.2, 0.1, 0.05, 0.01)]
    for seq in (by_target, by_risk):
        levels = [2.0 if x is None else x for x in seq]
        assert levels == sorted(levels), seq
        assert len(set(levels)) > 1, seq  # the data do separate them
    # the chosen set's agreement is at least the target in each case that decides
    for t in (0.8, 0.85, 0.9):
        got = choose_threshold(certainty, agrees, target=t, risk=0.1)
        assert got.agreement >= t


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="target"):
        choose_threshold([0.9], [True], target=1.0, risk=0.1)
    with pytest.raises(ValueError, match="risk"):
        choose_threshold([0.9], [True], target=0.9, risk=0)
    with pytest.raises(ValueError, match="certainty has 2 values"):
        choose_threshold([0.9, 0.8], [True], target=0.9, risk=0.1)
    with pytest.raises(ValueError, match="lie in"):
        choose_threshold([1.2], [True], target=0.9, risk=0.1)


def test_min_items_starts_the_scan_lower_past_an_early_disagreement():
    # 25 most certain items with 2 disagreements fail on their own; 200 with the same 2 pass.
    certainty = [0.99] * 25 + [0.9] * 175
    agrees = [False] * 2 + [True] * 198
    assert choose_threshold(certainty, agrees, target=0.9, risk=0.1).threshold is None
    got = choose_threshold(certainty, agrees, target=0.9, risk=0.1, min_items=100)
    assert got.threshold == 0.9 and got.n == 200 and got.agreement == pytest.approx(0.99)
