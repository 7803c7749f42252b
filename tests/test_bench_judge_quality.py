"""bench/judge_quality.py: its simulated judge is what its docstring says, and a short run prints its JSON."""

import json
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.services import SHARED_DATA, require

sys.path.insert(0, str(ROOT / "bench"))
import judge_quality


def test_the_flipped_judge_flips_at_its_rate_and_is_overconfident_by_its_factor():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=200_000)
    args = Namespace(flip_rate=0.15, overconfidence=2.0, concentration=4.0)
    p = judge_quality.flipped_judge(y, rng, args)
    verdict = (p >= 0.5).astype(int)
    wrong = verdict != y
    stated_error = 1 - np.maximum(p, 1 - p)
    assert wrong.mean() == pytest.approx(0.15, abs=0.005)
    assert stated_error.mean() == pytest.approx(0.15 / 2.0, abs=0.003)  # says half the error it makes
    # Informative: its least certain fifth is wrong far more often than its most certain fifth.
    order = np.argsort(stated_error)
    fifth = y.size // 5
    assert wrong[order[-fifth:]].mean() > 3 * wrong[order[:fifth]].mean()


def test_an_impossible_flip_rate_is_refused():
    with pytest.raises(ValueError, match="flip-rate"):
        judge_quality.flipped_judge(
            np.zeros(3, int), np.random.default_rng(0), Namespace(flip_rate=0.6, overconfidence=1.0, concentration=4.0)
        )


@pytest.mark.shared_data
def test_a_short_run_prints_the_figures_as_json_on_its_last_line():
    require("shared_data")
    result = subprocess.run(
        [sys.executable, "bench/judge_quality.py", "--repetitions", "4", "--files", "felm.jsonl",
         "--budgets", "0.2", "--jobs", "1", "--data", str(SHARED_DATA)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("guarantee_held_rate", "delta", "interval_coverage", "width_ratio_vs_classical", "certified_share"):
        assert key in figures
    assert figures["delta"] == 0.05
    assert [(c["judge"], c["sme_labels"], c["repetitions"]) for c in figures["cells"]] == [
        ("local", 136, 4),
        ("flipped", 136, 4),
    ]
    assert 0 <= figures["guarantee_held_rate"] <= 1 and 0 <= figures["certified_share"] <= 1
    assert "[2/2] felm.jsonl" in result.stderr  # the progress line


def test_fitting_on_the_used_columns_only_predicts_as_the_full_model_does():
    from judging.backends import local_model, local_vectorizer

    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(400)]
    texts = [" ".join(rng.choice(words, size=12)) for _ in range(300)]
    y = rng.integers(0, 2, size=300)
    features = local_vectorizer().fit_transform(texts)
    train, test = np.arange(60), np.arange(60, 300)  # the test rows use columns no training row has
    full = local_model(0).fit(features[train], y[train]).predict_proba(features[test])[:, 1]
    used = judge_quality._fit_predict(features[train], y[train], features[test], 0)
    np.testing.assert_allclose(used, full, atol=1e-9)
