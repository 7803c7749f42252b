"""Agreement figures against values worked out by hand."""

import pytest

from judging.metrics import agreement


def test_agreement_figures():
    truth = ["accept", "accept", "accept", "reject", "reject"]
    judge = ["accept", "accept", "reject", "reject", "accept"]
    got = agreement(truth, judge)
    # p_o = 3/5; p_e = 0.6*0.6 + 0.4*0.4 = 0.52; kappa = (0.6 - 0.52) / 0.48
    assert got["n"] == 5 and got["accuracy"] == pytest.approx(0.6)
    assert got["cohen_kappa"] == pytest.approx(0.08 / 0.48)
    assert got["majority_baseline"] == pytest.approx(0.6)
    assert got["precision_accept"] == pytest.approx(2 / 3) and got["recall_accept"] == pytest.approx(2 / 3)
    assert got["confusion"] == {
        "sme_accept": {"judge_accept": 2, "judge_reject": 1},
        "sme_reject": {"judge_accept": 1, "judge_reject": 1},
    }


def test_empty_and_degenerate_inputs():
    assert agreement([], [])["cohen_kappa"] is None
    assert agreement(["accept"] * 3, ["accept"] * 3)["cohen_kappa"] is None
    with pytest.raises(ValueError, match="truth has 2 labels, predicted has 1"):
        agreement(["accept", "reject"], ["accept"])
