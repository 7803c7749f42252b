"""Calibration against the SMEs: the recalibration map, cross-fitting, the reliability diagram, ECE and AUROC
(checked against scikit-learn on the same numbers), the service on PostgreSQL, the run page and its permissions."""

import json
from itertools import product

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from annotations.models import Item, Review
from judging import calibration
from judging.models import JudgeRun, Verdict
from judging.selectors import run_confidence_report
from judging.services import judge_run_calibrate, judge_run_finish_if_complete
from tests.conftest import label_for_local_classifier, make_items


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident raw probabilities: the truth is P(accept) = 0.2 + 0.6 p."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < 0.2 + 0.6 * p).astype(int)
    return p, y


# Pure functions, against scikit-learn


def test_reliability_bins_match_scikit_learns_calibration_curve():
    for seed in range(5):
        p, y = synthetic(400, seed)
        p[:5] = [0.0, 0.1, 0.5, 0.9, 1.0]  # edges land in the same bins as scikit-learn's
        rows = calibration.reliability_bins(p, y)
        prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
        filled = [r for r in rows if r["n"]]
        assert len(rows) == 10 and sum(r["n"] for r in rows) == 400
        assert [r["accept_rate"] for r in filled] == pytest.approx(prob_true)
        assert [r["mean_confidence"] for r in filled] == pytest.approx(prob_pred)
        for r in filled:
            low, high = r["interval"]
            assert 0 <= low <= r["accept_rate"] <= high <= 1


def test_the_wilson_interval_is_the_textbook_formula():
    k, n, z = 7, 20, 1.959963984540054
    phat = k / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    assert calibration.wilson_interval(k, n) == pytest.approx((centre - half, centre + half))
    assert calibration.wilson_interval(0, 0) is None


def test_ece_is_the_count_weighted_gap_of_scikit_learns_bins():
    p, y = synthetic(500, 3)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
    counts = counts[counts > 0]
    expected = float(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred)))
    assert calibration.expected_calibration_error(p, y) == pytest.approx(expected)
    # A perfectly calibrated constant has ECE 0; an always-sure wrong one has ECE 1.
    assert calibration.expected_calibration_error([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0)
    assert calibration.expected_calibration_error([1.0, 1.0], [0, 0]) == pytest.approx(1)
    assert calibration.expected_calibration_error([], []) is None


def _delong_variance_by_pairs(p, y) -> float:
    """DeLong et al. (1988) structural components, the O(m n) way: the fast midrank version must agree."""
    pos, neg = p[y == 1], p[y == 0]

    def psi(a, b):
        return 1.0 if a > b else 0.5 if a == b else 0.0

    v10 = np.array([np.mean([psi(x, z) for z in neg]) for x in pos])
    v01 = np.array([np.mean([psi(x, z) for x in pos]) for z in neg])
    return np.var(v10, ddof=1) / len(pos) + np.var(v01, ddof=1) / len(neg)


def test_auroc_matches_scikit_learn_and_its_delong_interval_the_pairwise_formula():
    for seed in range(4):
        p, y = synthetic(150, seed)
        p = np.round(p, 1)  # ties, counted one half
        got = calibration.auroc(p, y)
        assert got["auc"] == pytest.approx(roc_auc_score(y, p))
        assert got["se"] ** 2 == pytest.approx(_delong_variance_by_pairs(p, y))
        assert got["low"] < got["auc"] < got["high"] and (got["n"], got["n_accept"]) == (150, int(y.sum()))
        assert got["high"] - got["low"] == pytest.approx(2 * 1.959963984540054 * got["se"])
    assert calibration.auroc([0.2, 0.9], [1, 1]) is None


def test_platt_below_a_thousand_labels_isotonic_at_or_above_and_both_survive_json():
    p, y = synthetic(999)
    platt = json.loads(json.dumps(calibration.fit_map(p, y)))
    assert platt["method"] == "platt" and set(platt) == {"method", "a", "b"}
    # The truth is 0.2 + 0.6 p: the map pulls the judge's extremes in.
    low, high = calibration.apply_map(platt, [0.01, 0.99])
    assert 0.1 < low < 0.35 and 0.65 < high < 0.9
    p, y = synthetic(1000)
    isotonic = json.loads(json.dumps(calibration.fit_map(p, y)))
    assert isotonic["method"] == "isotonic"
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
    probe = np.linspace(-0.0, 1.0, 101)
    assert calibration.apply_map(isotonic, probe) == pytest.approx(reference.predict(probe))
    assert np.all(np.diff(calibration.apply_map(isotonic, probe)) >= 0)


def test_cross_fitting_never_uses_an_items_own_label_and_gives_unlabelled_items_a_folds_map():
    p, y = synthetic(120, 5)
    fit = calibration.cross_fit(p, y, [0.3, 0.7])
    assert fit.folds == calibration.FOLDS and sorted(set(fit.fold)) == list(range(fit.folds))
    # Each fold's values are the map fit on the other folds only...
    for k in range(fit.folds):
        inside = fit.fold == k
        mapping = calibration.fit_map(p[~inside], y[~inside], method="platt")
        assert fit.labelled[inside] == pytest.approx(calibration.apply_map(mapping, p[inside]))
        # An unlabelled item given fold k gets the same map as the labelled items of fold k.
        given = fit.unlabelled_fold == k
        assert fit.unlabelled[given] == pytest.approx(calibration.apply_map(mapping, np.array([0.3, 0.7])[given]))
    # Keys decide the unlabelled items' folds when given: key mod K, whatever their labels would be.
    keyed = calibration.cross_fit(p, y, [0.3, 0.3, 0.3], unlabelled_keys=[10, 11, 12])
    assert list(keyed.unlabelled_fold) == [0, 1, 2] and len(set(keyed.unlabelled)) == 3
    with pytest.raises(ValueError, match="2 unlabelled keys for 3"):
        calibration.cross_fit(p, y, [0.3, 0.3, 0.3], unlabelled_keys=[1, 2])
    # Seeded: the same labels give the same folds and values.
    assert np.array_equal(calibration.cross_fit(p, y, []).labelled, fit.labelled)


def test_too_few_labels_of_a_kind_calibrate_nothing_and_say_why():
    with pytest.raises(calibration.NotEnoughLabels) as caught:
        calibration.cross_fit([0.9] * 10 + [0.1] * 4, [1] * 10 + [0] * 4, [])
    assert (caught.value.n_accept, caught.value.n_reject) == (10, 4)
    assert "have 10 accepts, 4 rejects; need at least 5 of each" in str(caught.value)
    with pytest.raises(ValueError):
        calibration.reliability_bins([0.5, float("nan")], [1, 0])


# The service, the page, the API, on PostgreSQL


@pytest.fixture
def judged(project):
    """A finished run over 300 items: 120 SME-labelled (overconfident judge), 2 without a confidence, 1 few-shot."""
    p, y = synthetic(300, 11)
    items = Item.objects.bulk_create(
        Item(project=project, external_id=f"i{i}", prompt="q", response=f"a{i}") for i in range(300)
    )
    Review.objects.bulk_create(
        Review(item=items[i], decision="accept" if y[i] else "reject", origin="import") for i in range(120)
    )
    run = JudgeRun.objects.create(
        project=project,
        backend="openai",
        model="m",
        status="running",
        items_total=300,
        config={"few_shot_item_ids": [items[0].pk]},
    )
    Verdict.objects.bulk_create(
        Verdict(
            run=run,
            item=item,
            verdict="accept" if p[i] >= 0.5 else "reject",
            confidence=None if i in (1, 150) else float(p[i]),
        )
        for i, item in enumerate(items)
    )
    run.p, run.y, run.item_list = p, y, items
    return run


def test_finishing_a_run_calibrates_every_verdict_with_a_confidence(judged):
    assert judge_run_finish_if_complete(run_id=judged.pk)
    judged.refresh_from_db()
    fit = judged.calibration
    assert (fit["status"], fit["method"], fit["folds"]) == ("calibrated", "platt", 5)
    # 120 labelled, less the few-shot example and one without a confidence.
    assert (fit["n_labels"], fit["n_without_confidence"], fit["n_calibrated"]) == (118, 2, 298)
    assert fit["n_accept"] + fit["n_reject"] == 118 and fit["few_shot_excluded"] == 1
    values = dict(Verdict.objects.filter(run=judged).values_list("item__external_id", "confidence_calibrated"))
    assert values["i1"] is None and values["i150"] is None
    assert sum(v is not None for v in values.values()) == 298
    # Unlabelled items: the map of fold (CRC-32 of the external id mod 5), fit on the labelled items outside it.
    by_id = {item.external_id: item for item in judged.item_list}
    p_l, y_l = judged.p[2:120], judged.y[2:120]
    fold = calibration.fold_assignment(y_l, seed=calibration.SEED)
    for e in [f"i{i}" for i in range(120, 300) if i != 150]:
        j = calibration.fold_key(by_id[e].external_id) % 5
        mapping = calibration.fit_map(p_l[fold != j], y_l[fold != j], method="platt")
        assert values[e] == pytest.approx(calibration.apply_map(mapping, [judged.p[int(e[1:])]])[0])
    # Labelled items: out of fold, not the all-label map.
    labelled = [f"i{i}" for i in range(2, 120)]
    assert [values[e] for e in labelled] != pytest.approx(
        calibration.apply_map(fit["map"], [judged.p[int(e[1:])] for e in labelled])
    )
    # Calibration brings the overconfident judge's ECE down, on out-of-fold values.
    report = run_confidence_report(judged)
    assert report["raw"]["n"] == report["calibrated"]["n"] == 118
    assert connection.vendor == "postgresql"  # the values went through the UPDATE ... FROM unnest() path
    # Safe to repeat: the same labels give the same values.
    judge_run_calibrate(run=judged)
    again = dict(Verdict.objects.filter(run=judged).values_list("item__external_id", "confidence_calibrated"))
    assert again == values
    assert report["calibrated"]["ece"] < report["raw"]["ece"]
    assert report["n_without_confidence"] == 2 and report["few_shot_excluded"] == 1


def test_too_few_labels_leave_calibrated_confidence_empty_and_the_run_still_finishes(judged):
    Review.objects.filter(item__in=judged.item_list[5:120], decision="reject").delete()
    Verdict.objects.filter(run=judged).update(confidence_calibrated=0.5)  # stale values from an earlier fit
    assert judge_run_finish_if_complete(run_id=judged.pk)
    judged.refresh_from_db()
    assert judged.status == "finished" and judged.calibration["status"] == "not_enough_labels"
    assert "need at least 5 of each" in judged.calibration["reason"]
    assert not Verdict.objects.filter(run=judged, confidence_calibrated__isnull=False).exists()


def test_a_failing_calibration_is_recorded_and_the_run_still_finishes(judged, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the fit blew up")

    monkeypatch.setattr(calibration, "cross_fit", broken)
    assert judge_run_finish_if_complete(run_id=judged.pk)
    judged.refresh_from_db()
    assert judged.status == "finished"
    assert judged.calibration["status"] == "error" and "the fit blew up" in judged.calibration["error"]


def test_the_local_classifier_run_is_calibrated_when_it_finishes(project, start_run):
    label_for_local_classifier(project)
    run = start_run(project)
    assert run.status == "finished" and run.calibration["status"] == "calibrated"
    assert run.calibration["n_labels"] == 40
    assert not Verdict.objects.filter(run=run, confidence_calibrated__isnull=True).exists()


def test_the_rest_api_carries_raw_and_calibrated_confidence(client, lead, project, judged):
    judge_run_finish_if_complete(run_id=judged.pk)
    client.force_login(lead)
    rows = client.get(f"/api/projects/{project.slug}/runs/{judged.pk}/verdicts/", {"item": judged.item_list[200].pk})
    (row,) = rows.json()["results"]
    verdict = Verdict.objects.get(run=judged, item=judged.item_list[200])
    assert row["confidence"] == pytest.approx(judged.p[200]) == verdict.confidence
    assert row["confidence_calibrated"] == pytest.approx(verdict.confidence_calibrated)
    assert row["confidence_calibrated"] != pytest.approx(row["confidence"])


def test_the_run_page_shows_the_reliability_diagram_ece_and_auroc(client, lead, project, judged):
    judge_run_finish_if_complete(run_id=judged.pk)
    client.force_login(lead)
    page = client.get(reverse("judging:run_detail", args=[project.slug, judged.pk])).content.decode()
    report = run_confidence_report(judged)
    assert 'aria-label="Reliability diagram of raw confidence, n = ' in page
    assert 'aria-label="Reliability diagram of calibrated confidence, n = ' in page
    filled = sum(1 for kind in ("raw", "calibrated") for b in report[kind]["bins"] if b["n"])
    assert page.count('<rect class="bin"') == filled
    for kind in ("raw", "calibrated"):
        s = report[kind]
        assert f"ECE {s['ece']:.3f} <small>(n = 118)</small>" in page
        auc = s["auroc"]
        assert f"AUROC {auc['auc']:.3f} <small>(95 % CI {auc['low']:.3f} to {auc['high']:.3f}, DeLong; n = 118)" in page
    assert "Platt&#x27;s sigmoid" in page or "Platt's sigmoid" in page
    assert "2 without one" in page


def test_the_run_page_says_when_there_are_too_few_labels(client, lead, project, judged):
    Review.objects.filter(item__in=judged.item_list[3:120], decision="accept").delete()
    judge_run_finish_if_complete(run_id=judged.pk)
    judged.refresh_from_db()
    n_accept = judged.calibration["n_accept"]
    n_reject = judged.calibration["n_reject"]
    assert n_accept < 5
    client.force_login(lead)
    page = client.get(reverse("judging:run_detail", args=[project.slug, judged.pk])).content.decode()
    assert (
        f"Not enough SME labels to calibrate (have {n_accept} accept{'s' * (n_accept != 1)}, {n_reject} rejects; "
        "need at least 5 of each" in page
    )


def test_leads_and_staff_recalibrate_smes_and_outsiders_cannot(client, lead, staff, sme, outsider, project, judged):
    JudgeRun.objects.filter(pk=judged.pk).update(status="finished")
    url = reverse("judging:run_recalibrate", args=[project.slug, judged.pk])
    client.force_login(outsider)
    assert client.post(url).status_code == 404
    client.force_login(sme)
    assert client.post(url).status_code == 403
    assert not Verdict.objects.filter(run=judged, confidence_calibrated__isnull=False).exists()
    client.force_login(lead)
    assert client.get(url).status_code == 405
    response = client.post(url, follow=True)
    assert response.redirect_chain[-1][0] == judged.get_absolute_url()
    assert "Recalibrated on 118 SME labels" in response.content.decode()
    assert Verdict.objects.filter(run=judged, confidence_calibrated__isnull=False).count() == 298
    # New SME labels change nothing until someone recalibrates; then the map moves.
    before = JudgeRun.objects.get(pk=judged.pk).calibration["map"]
    Review.objects.bulk_create(
        Review(item=judged.item_list[i], decision="reject", origin="import") for i in range(120, 180)
    )
    assert JudgeRun.objects.get(pk=judged.pk).calibration["map"] == before
    client.force_login(staff)
    assert client.post(url).status_code == 302
    after = JudgeRun.objects.get(pk=judged.pk).calibration
    assert after["n_labels"] == 177  # 60 more, less i150 which has no confidence
    assert after["n_labels"] == 177 and after["map"] != before


def test_a_running_run_is_not_recalibrated_by_hand(client, lead, project, judged):
    client.force_login(lead)
    response = client.post(reverse("judging:run_recalibrate", args=[project.slug, judged.pk]), follow=True)
    assert "it is calibrated when it finishes" in response.content.decode()
    assert JudgeRun.objects.get(pk=judged.pk).calibration == {}
    with pytest.raises(CommandError, match="still running"):
        call_command("run_calibrate", judged.pk)


def test_the_command_recalibrates_and_prints_a_summary(judged, capsys):
    JudgeRun.objects.filter(pk=judged.pk).update(status="finished")
    call_command("run_calibrate", judged.pk)
    out = capsys.readouterr().out
    assert f"run {judged.pk}: platt map on 118 SME labels" in out and "298 verdicts calibrated" in out
    with pytest.raises(CommandError, match="no judge run"):
        call_command("run_calibrate", judged.pk + 1000)


@pytest.mark.parametrize("n_accept, n_reject", list(product([4, 5], [4, 5])))
def test_the_handful_is_five_of_each(project, n_accept, n_reject):
    items = make_items(project, [f"r{i}" for i in range(n_accept + n_reject)])
    run = JudgeRun.objects.create(project=project, backend="local", model="m", status="finished")
    for i, item in enumerate(items):
        accepted = i < n_accept
        Review.objects.create(item=item, decision="accept" if accepted else "reject", origin="import")
        Verdict.objects.create(run=run, item=item, verdict="accept", confidence=0.3 + 0.4 * accepted + 0.01 * i)
    summary = judge_run_calibrate(run=run)
    assert summary["status"] == ("calibrated" if min(n_accept, n_reject) >= 5 else "not_enough_labels")
