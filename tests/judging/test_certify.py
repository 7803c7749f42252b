"""Learn-then-Test certification of the accepted set (judging.certify), against scipy on hand-checkable numbers."""

import pytest
from scipy.stats import binom, binomtest

from judging.certify import certify, labels_to_pass, lower_bound

# target 0.9, delta 0.1: 22 labels, all accepted, are the least that can pass (0.9**22 = 0.098 <= 0.1 < 0.9**21).
TARGET, DELTA = 0.9, 0.1


def test_certifies_the_lowest_threshold_before_the_first_failure():
    # 30 labelled items at P(accept) 0.99, all SME-accepted; 10 at 0.80, all SME-rejected.
    p = [0.99] * 30 + [0.80] * 10
    y = [True] * 30 + [False] * 10
    population = [0.995] * 5 + [0.9] * 7 + [0.8] * 11 + [0.6] * 3
    cert = certify(p, y, target=TARGET, delta=DELTA, population=population)
    # Every grid value from 0.99 down to 0.805 has the same 30 labels (p-value 0.9**30 = 0.042 <= 0.1) and passes;
    # at 0.80 the SMEs accept 30 of 40: P(Bin(40, 0.9) >= 30) is far above 0.1, so the scan stops.
    assert cert.threshold == pytest.approx(0.805)
    assert (cert.n, cert.accepted_by_smes, cert.n_labelled) == (30, 30, 40)
    assert cert.p_value == pytest.approx(0.9**30)
    # Clopper-Pearson lower bound with all n successes is delta ** (1 / n).
    assert cert.bound == pytest.approx(0.1 ** (1 / 30))
    assert cert.bound >= TARGET
    assert cert.certified == 12  # items with P(accept) >= 0.805
    nxt = cert.next
    assert (nxt["threshold"], nxt["items"], nxt["more_items"]) == (0.8, 23, 11)
    assert (nxt["labelled_now"], nxt["accepted_now"]) == (40, 30)
    m = nxt["more_labels"]
    assert binom.sf(30 + m - 1, 40 + m, TARGET) <= DELTA < binom.sf(30 + m - 2, 40 + m - 1, TARGET)
    assert nxt["labels"] == 40 + m


def test_bound_is_the_dual_of_the_binomial_test():
    for k, n in [(25, 26), (40, 42), (90, 100), (19, 20)]:
        passes = binomtest(k, n, TARGET, alternative="greater").pvalue <= DELTA
        assert (lower_bound(k, n, DELTA) >= TARGET) == passes


def test_labels_to_pass_with_none_yet():
    # With no labels the least all-accepted count that passes is items_needed: 22 at 0.9 / 0.1.
    assert labels_to_pass(0, 0, target=TARGET, delta=DELTA) == 22
    assert labels_to_pass(22, 22, target=TARGET, delta=DELTA) == 0


def test_too_few_labels_gives_a_statement_and_what_would_help():
    cert = certify([0.99] * 5, [True] * 5, target=TARGET, delta=DELTA, population=[0.9, 0.7])
    assert cert.threshold is None and cert.certified == 0 and cert.bound is None
    assert "Only 5 uniform-slice SME labels" in cert.reason and "at least 22" in cert.reason
    assert cert.next["threshold"] == 0.5 and cert.next["more_labels"] == 17 and cert.next["more_items"] == 2


def test_more_labels_than_items_left_there_is_said_to_be_out_of_reach():
    # 17 more labels at P(accept) >= 0.5 are wanted; with 2 unlabelled items there no draw can bring them.
    few = certify([0.99] * 5, [True] * 5, target=TARGET, delta=DELTA, population=[0.9, 0.7])
    assert few.next["reachable"] is False and few.next["uniform_draw"] is None
    # With 30 there a uniform draw of about 17 brings them (every labelled item so far sits at that threshold).
    many = certify([0.99] * 5, [True] * 5, target=TARGET, delta=DELTA, population=[0.9] * 30)
    assert many.next["reachable"] is True and many.next["uniform_draw"] == 17


def test_no_labels_and_one_class_never_crash():
    empty = certify([], [], target=TARGET, delta=DELTA, population=[0.9])
    assert empty.threshold is None and "No uniform-slice SME labels" in empty.reason
    rejected = certify([0.99] * 40, [False] * 40, target=TARGET, delta=DELTA, population=[0.99])
    assert rejected.threshold is None
    assert "accept 0 of 40" in rejected.reason
    assert rejected.next["more_labels"] is not None and rejected.next["more_labels"] > 40


def test_everything_passes_leaves_nothing_next():
    cert = certify([0.6] * 50, [True] * 50, target=TARGET, delta=DELTA, population=[0.55, 0.7])
    assert cert.threshold == 0.5 and cert.certified == 2 and cert.next is None


def test_bad_input_raises():
    with pytest.raises(ValueError):
        certify([0.5], [True, False], target=TARGET, delta=DELTA)
    with pytest.raises(ValueError):
        certify([1.5], [True], target=TARGET, delta=DELTA)
    with pytest.raises(ValueError):
        certify([0.5], [True], target=1.0, delta=DELTA)
