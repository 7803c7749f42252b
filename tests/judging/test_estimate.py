"""The accepted set's precision with a 95 % interval: PPI++ (ppi_py) and Wilson (scipy), checked against the
libraries called directly on the same arrays; small projects and one-class samples get notes, never a crash."""

import numpy as np
import pytest
from django.urls import reverse
from ppi_py import ppi_mean_ci, ppi_mean_pointestimate
from rest_framework.authtoken.models import Token
from scipy.stats import binomtest, norm

from annotations.models import Review, SampleMembership
from annotations.sampling import sample_draw
from judging.estimate import accepted_set_precision, ppi_share
from judging.models import GateDecision, JudgeRun, Verdict
from judging.services import gate_apply
from tests.conftest import make_items, use_run


def build(project, lead, *, n_items: int, size: int, design: str = "uniform", seed: int = 0, labels=None):
    """Items with a calibrated judge (P(accept) uniform on [0.05, 0.95], the SME label drawn from it), a draw of
    ``size`` labelled by the SMEs (imported labels on the drawn items), and the judge as the gating policy."""
    rng = np.random.default_rng(seed)
    items = make_items(project, [f"answer {i}" for i in range(n_items)])
    p = rng.uniform(0.05, 0.95, n_items)
    human = labels if labels is not None else np.where(rng.uniform(size=n_items) < p, "accept", "reject")
    run = JudgeRun.objects.create(
        project=project, backend="openai", model="j", base_url="http://j/v1", status="finished"
    )
    Verdict.objects.bulk_create(
        Verdict(run=run, item=item, verdict="accept" if p[i] >= 0.5 else "reject", confidence_calibrated=p[i])
        for i, item in enumerate(items)
    )
    if design == "confidence":
        use_run(run, user=lead)  # the confidence-weighted design reads the policy's certainty
    draw = sample_draw(project=project, size=size, design=design, seed=seed, user=lead)
    index = {item.pk: i for i, item in enumerate(items)}
    Review.objects.bulk_create(
        Review(item_id=m.item_id, decision=human[index[m.item_id]], origin="import") for m in draw.members.all()
    )
    if design == "confidence":
        gate_apply(project=project)  # as the SMEs' decisions would, through the ground-truth listener
    else:
        use_run(run, user=lead)  # gates every item: SME labels win, the judge decides the rest
    return items, p, human, index


def finite_population_ppi(y, yhat, yhat_u, w) -> tuple[float, float, float]:
    """The estimate from ppi_py with λ = Cov_w(Y, Ŷ)/Var_w(Ŷ) clipped to [0, 1], and the interval
    θ ± 1.96·s·sqrt(1/n_eff + 1/N) (Särndal, Swensson & Wretman 1992, §6.3), written out longhand."""
    w = np.asarray(w, dtype=float) / np.mean(w)
    sw = w.sum()
    my, mf = (w * y).sum() / sw, (w * yhat).sum() / sw
    lam = min(max(((w * (y - my) * (yhat - mf)).sum() / sw) / ((w * (yhat - mf) ** 2).sum() / sw), 0.0), 1.0)
    theta = ppi_mean_pointestimate(y, yhat, yhat_u, lam=lam, w=w)[0]
    r = y - lam * yhat
    s2 = (w * (r - (w * r).sum() / sw) ** 2).sum() / sw * len(y) / (len(y) - 1)
    half = norm.ppf(0.975) * np.sqrt(s2 * ((w**2).sum() / sw**2 + 1 / len(yhat_u)))
    return theta, theta - half, theta + half


def test_the_interval_covers_the_realised_share_of_the_unlabelled_items():
    """Seeded draws from a finite set of 2,000 items, a judge whose P(accept) is informative: the interval covers
    the share of the items left unlabelled at about the nominal 95 %, where ppi_py's interval (for an infinite
    population's mean) covers markedly less once the labels are a fifth of the set."""
    rng = np.random.default_rng(5)
    truth = rng.uniform(size=2000) < 0.85
    p = np.clip(np.where(truth, rng.beta(6, 2, 2000), rng.beta(2, 4, 2000)), 0.01, 0.99)
    ours, theirs = [], []
    for _ in range(400):
        labelled = rng.permutation(2000)[:400]
        rest = np.setdiff1d(np.arange(2000), labelled)
        y, share = truth[labelled].astype(float), truth[rest].mean()
        got = ppi_share(y, p[labelled], p[rest])
        ours.append(got["low"] <= share <= got["high"])
        low, high = ppi_mean_ci(y, p[labelled], p[rest], alpha=0.05, lam=None)
        theirs.append(low[0] <= share <= high[0])
    assert 0.93 <= np.mean(ours) <= 0.98
    assert np.mean(theirs) < np.mean(ours) - 0.02


def expected(project, items, p, human, index, outcome: str) -> dict:
    """The same figures computed straight from the arrays, with the libraries."""
    drawn = {m.item_id: m for m in SampleMembership.objects.filter(draw__project=project)}
    says = {item.pk: ("accept" if p[index[item.pk]] >= 0.5 else "reject") for item in items}
    labelled = [i for i in drawn if says[i] == outcome]
    unlabelled = [item.pk for item in items if item.pk not in drawn and says[item.pk] == outcome]
    y = np.array([human[index[i]] == "accept" for i in labelled], dtype=float)
    yhat = np.array([p[index[i]] for i in labelled])
    yhat_u = np.array([p[index[i]] for i in unlabelled])
    w = np.array([1 / drawn[i].inclusion_probability for i in labelled])
    theta, low, high = finite_population_ppi(y, yhat, yhat_u, w)
    uniform = [i for i in labelled if drawn[i].uniform_slice]
    k = sum(human[index[i]] == "accept" for i in uniform)
    wilson = binomtest(k, len(uniform)).proportion_ci(confidence_level=0.95, method="wilson")
    known = [i for i in drawn if human[index[i]] == outcome]  # the gate follows the SME label
    known_accepts = sum(human[index[i]] == "accept" for i in known)
    return {
        "ppi": (theta, max(low, 0), min(high, 1), len(labelled), len(unlabelled)),
        "classical": (k / len(uniform), wilson.low, wilson.high, len(uniform)),
        "whole": (known_accepts + theta * len(unlabelled)) / (len(known) + len(unlabelled)),
    }


@pytest.mark.parametrize("design", ["uniform", "confidence"])
def test_the_figures_match_ppi_py_and_scipy_on_the_same_arrays(project, lead, design):
    items, p, human, index = build(project, lead, n_items=400, size=120, design=design, seed=3)
    estimate = accepted_set_precision(project)
    for name, outcome in (("accepted", "accept"), ("rejected", "reject")):
        part, want = estimate[name], expected(project, items, p, human, index, outcome)
        ppi = part["ppi"]
        assert (ppi["estimate"], ppi["low"], ppi["high"]) == pytest.approx(want["ppi"][:3], abs=1e-12)
        assert (ppi["n"], ppi["N"]) == want["ppi"][3:]
        classical = part["classical"]
        if want["classical"][3] < 10:  # a confidence-weighted draw's uniform slice can leave too few here
            assert classical is None and any("uniform-slice SME labels" in note for note in part["notes"])
        else:
            assert (classical["estimate"], classical["low"], classical["high"]) == pytest.approx(want["classical"][:3])
            assert classical["n"] == want["classical"][3]
        assert part["whole_set"]["estimate"] == pytest.approx(want["whole"])
        assert part["whole_set"]["low"] <= part["whole_set"]["estimate"] <= part["whole_set"]["high"]
    # A calibrated judge that accepts from p >= 0.5: its accepts are right about 3/4 of the time, its rejects
    # wrong about 1/4 of the time.
    assert 0.6 < estimate["accepted"]["ppi"]["estimate"] < 0.9
    assert 0.1 < estimate["rejected"]["ppi"]["estimate"] < 0.4
    if design == "confidence":
        weights = {m.inclusion_probability for m in SampleMembership.objects.all()}
        assert len(weights) > 2  # unequal weights, so the test checks they reach ppi_py


def test_a_small_project_gets_notes_not_intervals_and_never_a_crash(client, project, lead):
    build(project, lead, n_items=16, size=6, seed=1)
    estimate = accepted_set_precision(project)
    for name in ("accepted", "rejected"):
        part = estimate[name]
        assert part["ppi"] is None and part["classical"] is None
        assert any("at least 10 are needed" in note for note in part["notes"])
    client.force_login(lead)
    page = client.get(reverse("judging:project_detail", args=["support"])).content.decode()
    assert "too few SME labels for an interval" in page and "at least 10 are needed" in page


def test_a_project_with_nothing_gated_says_the_set_is_empty(project, lead):
    make_items(project, ["a", "b"])
    estimate = accepted_set_precision(project)
    assert estimate["accepted"]["notes"] == ["The set is empty."] and estimate["policy"]


def test_a_sample_lacking_a_class_gets_a_statement_and_the_classical_interval(project, lead):
    rng = np.random.default_rng(0)
    labels = np.where(rng.uniform(size=200) < 2, "accept", "reject")  # every SME label is accept
    build(project, lead, n_items=200, size=80, seed=2, labels=labels)
    part = accepted_set_precision(project)["accepted"]
    assert part["ppi"] is None and part["classical"]["estimate"] == 1.0
    assert any("Only 0 of the" in note and "are rejects" in note for note in part["notes"])
    assert part["classical"]["low"] < 1.0  # Wilson still says how sure n labels make us


def test_labels_no_draw_recorded_are_counted_but_not_used(project, lead):
    items, p, _, index = build(project, lead, n_items=100, size=30, seed=4)
    drawn = set(SampleMembership.objects.values_list("item_id", flat=True))
    extra = [item for item in items if item.pk not in drawn][:5]
    Review.objects.bulk_create(Review(item=item, decision="reject", origin="import") for item in extra)
    part = accepted_set_precision(project)["accepted"]
    extra_accepts = sum(p[index[item.pk]] >= 0.5 for item in extra)
    assert part["unrecorded"] == extra_accepts
    if extra_accepts:
        assert any("no recorded draw chose" in note for note in part["notes"])


def test_the_estimate_api_is_for_leads(client, project, lead, sme, outsider):
    build(project, lead, n_items=60, size=30, seed=5)

    def get(user):
        token, _ = Token.objects.get_or_create(user=user)
        return client.get("/api/projects/support/estimate/", HTTP_AUTHORIZATION=f"Token {token.key}")

    assert get(outsider).status_code == 404
    assert get(sme).status_code == 403
    body = get(lead).json()
    assert set(body) >= {"accepted", "rejected", "methods", "assumptions", "policy"}
    assert "Wilson" in body["methods"]["classical"] and "PPI++" in body["methods"]["ppi"]
    assert body["accepted"]["size"] + body["rejected"]["size"] == 60


def test_with_a_certificate_the_accepted_set_is_estimated_from_the_labels_above_its_threshold(
    project, lead, django_capture_on_commit_callbacks
):
    from judging.services import certification_set

    p_drawn = np.random.default_rng(7).uniform(0.05, 0.95, 300)
    human = np.where(p_drawn >= 0.7, "accept", "reject")
    items, p, _, index = build(project, lead, n_items=300, size=150, seed=7, labels=human)
    with django_capture_on_commit_callbacks(execute=True):
        made = certification_set(project=project, target=0.8, delta=0.1, user=lead)
    assert made.threshold is not None
    drawn = {m.item_id: m for m in SampleMembership.objects.filter(draw__project=project)}
    certified = [item.pk for item in items if p[index[item.pk]] >= made.threshold]
    labelled = [i for i in certified if i in drawn]
    unlabelled = [i for i in certified if i not in drawn]
    y = np.array([human[index[i]] == "accept" for i in labelled], dtype=float)
    yhat = np.array([p[index[i]] for i in labelled])
    yhat_u = np.array([p[index[i]] for i in unlabelled])
    w = np.array([1 / drawn[i].inclusion_probability for i in labelled])
    part = accepted_set_precision(project)["accepted"]
    assert (part["labelled"], part["estimated"]) == (len(labelled), len(unlabelled))
    assert part["classical"]["n"] == len(labelled) and part["classical"]["estimate"] == pytest.approx(y.mean())
    assert part["known"] + part["estimated"] == part["size"] == GateDecision.objects.filter(outcome="accept").count()
    # The SME labels below the threshold rectify nothing: the accepted set's precision is not dragged down by them.
    # Above the threshold the SMEs reject fewer than 5 of the labelled items, too few for PPI++'s normal
    # interval: Wilson's stands, and says more than the certificate's target.
    rejects = int(len(y) - y.sum())
    assert rejects < 5 and part["ppi"] is None
    assert any(f"Only {rejects} of the" in note and "not reliable" in note for note in part["notes"])
    assert part["classical"]["low"] > 0.8
    # With more rejects among the labels above the threshold, PPI++ rectifies from those labels only.
    flip = np.flatnonzero(y == 1)[:6]
    Review.objects.filter(item_id__in=[labelled[i] for i in flip]).update(decision="reject")
    y[flip] = 0
    part = accepted_set_precision(project)["accepted"]
    assert (part["ppi"]["n"], part["ppi"]["N"]) == (len(labelled), len(unlabelled))
    _, low, high = finite_population_ppi(y, yhat, yhat_u, w)
    assert (part["ppi"]["low"], part["ppi"]["high"]) == pytest.approx((max(low, 0), min(high, 1)), abs=1e-12)
