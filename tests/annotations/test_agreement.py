"""Agreement between SMEs, checked against the libraries on the same labels, and the ground-truth rule."""

import krippendorff
import numpy as np
import pytest
from django.contrib.auth import get_user_model
from sklearn.metrics import cohen_kappa_score

from annotations.models import Adjudication, Review
from annotations.selectors import agreement_report, ground_truth
from tests.conftest import make_items

A, R = "accept", "reject"


def review_grid(project, grid):
    """``grid[reviewer][item]``: a decision or None; returns the items."""
    items = make_items(project, [f"answer {i}" for i in range(len(grid[0]))])
    for n, row in enumerate(grid):
        reviewer = get_user_model().objects.create_user(f"sme{n}")
        for item, decision in zip(items, row, strict=True):
            if decision:
                Review.objects.create(
                    item=item, reviewer=reviewer, decision=decision, reason="tone" if decision == R else ""
                )
    return items


def test_two_smes_cohens_kappa_matches_sklearn(project):
    grid = [[A, A, R, R, A, A, R, A], [A, R, R, R, A, A, A, A]]
    review_grid(project, grid)
    report = agreement_report(project)
    assert report["items"] == 8 and report["reviewers"] == 2
    assert report["cohen_kappa"] == pytest.approx(cohen_kappa_score(grid[0], grid[1]))
    assert report["disagreements"] == 2


def test_more_smes_krippendorffs_alpha_matches_the_library_with_missing_values(project):
    grid = [[A, A, R, None, A, R], [A, R, R, R, None, R], [A, A, None, R, A, A]]
    review_grid(project, grid)
    report = agreement_report(project)
    values = np.array([[{A: 1.0, R: 0.0}[v] if v else np.nan for v in row] for row in grid])
    assert report["krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=values, level_of_measurement="nominal")
    )
    assert report["cohen_kappa"] is None  # three SMEs: alpha, not kappa
    per_sme = {row["reviewer"]: row for row in report["per_sme"]}
    # Majorities: A, A, R, R, A, R -> sme0 agrees on 5/5, sme1 on 4/5, sme2 on 4/5 (item 5 tie-free: R, R, A).
    assert per_sme["sme0"]["agreement"] == pytest.approx(5 / 5)
    assert per_sme["sme1"]["agreement"] == pytest.approx(4 / 5)
    assert per_sme["sme2"]["agreement"] == pytest.approx(4 / 5)


def test_ground_truth_rule_single_majority_tie_adjudicated(project):
    items = review_grid(project, [[A, A, R, A], [None, R, R, R], [None, A, None, None]])
    truth = ground_truth(project=project)
    assert truth[items[0].pk] == A  # a single review
    assert truth[items[1].pk] == A  # majority 2 to 1
    assert truth[items[2].pk] == R
    assert items[3].pk not in truth  # a tie: no ground truth yet
    Adjudication.objects.create(item=items[3], decision=R)
    Adjudication.objects.create(item=items[1], decision=R)
    truth = ground_truth(project=project)
    assert truth[items[3].pk] == R and truth[items[1].pk] == R  # the lead wins, even over a majority


def test_alpha_from_counts_is_krippendorffs_alpha_of_the_library(project):
    """The bootstrap's closed form, on every item once, is the library's alpha on the same labels."""
    from annotations.statistics import alpha_from_counts

    grid = [[A, A, R, None, A, R, A, A], [A, R, R, R, None, R, A, R], [A, A, None, R, A, A, None, A]]
    values = np.array([[{A: 1.0, R: 0.0}[v] if v else np.nan for v in row] for row in grid])
    columns = [[row[i] for row in grid if row[i]] for i in range(len(grid[0]))]
    accepts = np.array([c.count(A) for c in columns], dtype=float)
    rejects = np.array([c.count(R) for c in columns], dtype=float)
    alpha = alpha_from_counts(accepts, rejects, np.ones(len(columns)))
    assert alpha == pytest.approx(krippendorff.alpha(reliability_data=values, level_of_measurement="nominal"))


def test_the_intervals_are_seeded_contain_the_estimate_and_match_scipys_bootstrap(project):
    """40 items, two SMEs: each interval holds its figure, is the same on every call (seed 0), and is close to
    scipy.stats.bootstrap's percentile interval on the same data (no resample is degenerate at this n)."""
    from scipy.stats import bootstrap

    first = [R if i % 2 == 0 else A for i in range(40)]
    second = [x if i % 5 else (A if x == R else R) for i, x in enumerate(first)]
    review_grid(project, [first, second])
    report = agreement_report(project)
    assert report["cohen_kappa_n"] == 40 and report["items"] == 40
    low, high = report["cohen_kappa_ci"]
    assert low < report["cohen_kappa"] < high
    low_a, high_a = report["krippendorff_alpha_ci"]
    assert low_a < report["krippendorff_alpha"] < high_a
    assert agreement_report(project)["krippendorff_alpha_ci"] == (low_a, high_a)

    def kappa(a, b):
        return cohen_kappa_score(a, b)

    ones = (np.array(first) == A).astype(int), (np.array(second) == A).astype(int)
    scipy_ci = bootstrap(
        ones, kappa, paired=True, vectorized=False, method="percentile", n_resamples=2000, random_state=1
    ).confidence_interval
    assert (low, high) == pytest.approx((scipy_ci.low, scipy_ci.high), abs=0.05)


def test_per_sme_agreement_has_a_wilson_interval(project):
    grid = [[A, A, R, R, A], [A, A, R, R, R], [A, A, R, A, R]]
    review_grid(project, grid)
    from scipy.stats import binomtest

    row = next(r for r in agreement_report(project)["per_sme"] if r["reviewer"] == "sme0")
    expected = binomtest(4, 5).proportion_ci(method="wilson")
    assert row["reviews"] == 5 and row["ci"] == pytest.approx((expected.low, expected.high))


def test_with_two_items_the_figures_come_with_n_and_no_interval_pretending_to_be_exact(project):
    review_grid(project, [[A, R], [R, A]])
    report = agreement_report(project)
    assert report["cohen_kappa"] == pytest.approx(-1.0) and report["cohen_kappa_n"] == 2
    assert report["cohen_kappa_n"] < report["small_n"]
