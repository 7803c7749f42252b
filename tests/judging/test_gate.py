"""The gate's rules, one test per branch (see judging/gate.py and DESIGN.md "Gate")."""

import pytest

from judging.gate import decide


def test_sme_ground_truth_wins_over_the_judge():
    assert decide(ground_truth="accept", verdict="reject", rule_rejections=[]).outcome == "accept"
    outcome = decide(ground_truth="reject", verdict="accept", rule_rejections=[])
    assert (outcome.outcome, outcome.basis, outcome.basis_decision) == ("reject", "sme", "reject")


@pytest.mark.parametrize("verdict", ["accept", "reject"])
def test_without_ground_truth_the_judge_decides(verdict):
    outcome = decide(ground_truth=None, verdict=verdict, rule_rejections=[])
    assert (outcome.outcome, outcome.basis, outcome.vetoed) == (verdict, "judge", False)


@pytest.mark.parametrize(("truth", "verdict", "basis"), [("accept", None, "sme"), (None, "accept", "judge")])
def test_it_rejects_when_any_rule_fires_whatever_the_source(truth, verdict, basis):
    outcome = decide(ground_truth=truth, verdict=verdict, rule_rejections=["recommends a competitor", "curt"])
    assert outcome.outcome == "reject"
    assert outcome.basis == basis and outcome.basis_decision == "accept"
    assert outcome.vetoed and outcome.reasons == ["recommends a competitor", "curt"]


def test_neither_review_nor_verdict_is_pending():
    outcome = decide(ground_truth=None, verdict=None, rule_rejections=[])
    assert (outcome.outcome, outcome.basis, outcome.vetoed) == ("pending", "none", False)


def test_a_rule_veto_rejects_even_an_item_with_neither_review_nor_verdict():
    outcome = decide(ground_truth=None, verdict=None, rule_rejections=["leaks a phone number"])
    assert (outcome.outcome, outcome.basis, outcome.vetoed) == ("reject", "none", True)
