"""The project's certificate: computed from the database as ``judging.certify.certify`` on the same arrays, stored
and logged by ``services.certification_set``, served to leads by the REST API; a small project gets a statement."""

import logging

import numpy as np
import pytest
from django.db.models import F
from rest_framework.authtoken.models import Token

from annotations.models import Item, Review, SampleMembership, Slot
from annotations.queue import in_sme_queue, next_item
from annotations.selectors import ground_truth
from annotations.services import adjudicate, adjudication_delete
from distillation.models import TrainingSet
from distillation.training_sets import training_set_create
from judging import gate
from judging.certify import certify
from judging.models import Certification, GateDecision, Verdict
from judging.services import (
    CertificationError,
    certification_set,
    gating_policy_set,
    judge_run_calibrate,
    regate_request,
    sme_queue_prioritise,
)
from tests.judging.test_estimate import build


def test_the_certificate_is_certify_on_the_uniform_slice_and_the_unlabelled_accepts(project, lead, caplog):
    # The SMEs accept exactly the items of P(accept) >= 0.7 (the same draw of P(accept) as build's), so precision
    # is 1 down to 0.7 and falls below: the certified threshold lies a little under 0.7.
    p_drawn = np.random.default_rng(7).uniform(0.05, 0.95, 300)
    labels = np.where(p_drawn >= 0.7, "accept", "reject")
    _, p, _, index = build(project, lead, n_items=300, size=150, seed=7, labels=labels)
    assert np.array_equal(p, p_drawn)
    uniform = set(SampleMembership.objects.filter(uniform_slice=True).values_list("item_id", flat=True))
    truth = ground_truth(project=project)
    labelled = [i for i in truth if i in uniform]
    accepted = GateDecision.objects.filter(outcome="accept").values_list("item_id", flat=True)
    population = [p[index[i]] for i in accepted if i not in truth]
    want = certify(
        [p[index[i]] for i in labelled],
        [truth[i] == "accept" for i in labelled],
        target=0.8,
        delta=0.1,
        population=population,
    )
    with caplog.at_level(logging.INFO, logger="judging.services"):
        got = certification_set(project=project, target=0.8, delta=0.1, user=lead)
    assert (got.threshold, got.n, got.bound, got.certified) == (want.threshold, want.n, want.bound, want.certified)
    assert got.n_labelled == len(labelled) == got.design["uniform_slice_labels"]
    assert got.design["draws"][0]["design"] == "uniform" and got.policy and got.created_by == lead
    assert "Learn-then-Test" in got.method and got.result["assumptions"][0] == "SMEs are the truth."
    assert any(f"certification {got.pk} of project support" in r.getMessage() for r in caplog.records)
    assert 0.55 < got.threshold <= 0.7 and got.bound >= 0.8 and got.certified > 0
    assert got.result["next"]["threshold"] < got.threshold and got.result["next"]["more_items"] > 0


def test_a_small_project_or_no_policy_gets_a_statement(project, lead):
    build(project, lead, n_items=12, size=5, seed=1)
    small = certification_set(project=project, target=0.9, delta=0.05, user=lead)
    assert small.threshold is None and small.certified == 0 and small.bound is None
    assert "uniform-slice SME labels" in small.result["reason"]
    assert small.result["next"]["more_labels"] is not None
    Verdict.objects.all().delete()
    project.gating_policy.delete()
    none = certification_set(project=project, target=0.9, delta=0.05, user=lead)
    assert none.threshold is None and "no gating policy" in none.result["reason"]


def test_out_of_range_targets_are_refused(project, lead):
    for target, delta in [(1.0, 0.1), (0.9995, 0.1), (0.4, 0.1), (0.9, 0.0), (0.9, 0.6)]:
        with pytest.raises(CertificationError):
            certification_set(project=project, target=target, delta=delta, user=lead)
    assert not Certification.objects.exists()


def test_the_certificate_api_is_for_leads(client, project, lead, sme, outsider):
    build(project, lead, n_items=80, size=40, seed=3)

    def call(user, method="get", **data):
        token, _ = Token.objects.get_or_create(user=user)
        send = getattr(client, method)
        return send(
            "/api/projects/support/certificate/",
            data=data,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Token {token.key}",
        )

    assert call(outsider).status_code == 404
    assert call(sme).status_code == 403
    assert call(sme, "post", target=0.9, delta=0.1).status_code == 403
    assert call(lead).json()["certificate"] is None
    assert call(lead, "post", target=1.0, delta=0.1).status_code == 400
    # Each bad field is named; 0.9999 is refused as the form and the model refuse it.
    assert list(call(lead, "post", target=0.9999, delta=0.1).json()) == ["target"]
    assert list(call(lead, "post", target=0.9, delta=-0.0).json()) == ["delta"]
    assert not Certification.objects.exists()
    made = call(lead, "post", target=0.7, delta=0.1)
    assert made.status_code == 201
    body = call(lead).json()["certificate"]
    assert body["target"] == 0.7 and body["delta"] == 0.1 and body["created_by"] == lead.username
    assert body["n_labelled"] == Certification.objects.get().n_labelled


def test_a_lead_certifies_from_the_project_page(client, project, lead, sme):
    build(project, lead, n_items=40, size=10, seed=2)
    client.force_login(lead)
    page = client.get("/projects/support/").content.decode()
    assert "No certificate yet" in page and 'action="/projects/support/certify/"' in page
    bad = client.post("/projects/support/certify/", {"target": "1.5", "delta": "0.05"}, follow=True)
    assert "Not certified" in bad.content.decode() and not Certification.objects.exists()
    done = client.post("/projects/support/certify/", {"target": "0.9", "delta": "0.05"}, follow=True).content.decode()
    made = Certification.objects.get()
    assert made.created_by == lead and made.threshold is None  # 10 labels cannot show 0.9 at δ 0.05
    assert "Nothing certified" in done and "nothing certified" in done and "more uniform-slice SME labels" in done
    client.force_login(sme)
    assert client.post("/projects/support/certify/", {"target": "0.9", "delta": "0.05"}).status_code in (403, 404)
    assert Certification.objects.count() == 1


def snapshot(project, capture):
    with capture(execute=True):
        training_set = training_set_create(project=project, options={"format": "chat"})
    training_set.refresh_from_db()
    assert training_set.status == TrainingSet.Status.READY, training_set.error
    return training_set


def test_every_snapshot_records_the_certificate_in_lineage_and_report(
    project, lead, django_capture_on_commit_callbacks
):
    p_drawn = np.random.default_rng(7).uniform(0.05, 0.95, 300)
    build(project, lead, n_items=300, size=150, seed=7, labels=np.where(p_drawn >= 0.7, "accept", "reject"))
    before = snapshot(project, django_capture_on_commit_callbacks)
    assert before.lineage["certificate"]["certified"] is False
    assert "no lead has set a precision target" in before.report["certificate"]["statement"]
    assert before.lineage["certificate"]["assumptions"][0] == "SMEs are the truth."

    made = certification_set(project=project, target=0.8, delta=0.1, user=lead)  # its re-gating never runs
    with django_capture_on_commit_callbacks(execute=True):
        refused = training_set_create(project=project, options={"format": "chat"})
    refused.refresh_from_db()
    assert refused.status == TrainingSet.Status.FAILED and "Not applied yet" in refused.error
    assert refused.rows.count() == 0
    with django_capture_on_commit_callbacks(execute=True):
        regate_request(project.pk)
    after = snapshot(project, django_capture_on_commit_callbacks)
    cert = after.lineage["certificate"]
    assert cert == after.report["certificate"]
    assert cert["certified"] is True and cert["certification"] == made.pk
    assert (cert["target"], cert["delta"], cert["bound"], cert["threshold"]) == (0.8, 0.1, made.bound, made.threshold)
    assert cert["items_certified"] == made.certified and "Learn-then-Test" in cert["method"]
    assert cert["sme_labels"]["n"] == made.n and cert["sme_labels"]["design"]["draws"][0]["design"] == "uniform"
    assert cert["gating_policy"] == project.gating_policy.label and cert["policy_changed_since"] is False
    assert any("recorded design" in a for a in cert["assumptions"])
    assert f"from {made.n} SME labels" in cert["statement"]
    assert cert["changed_since"]["stale"] is False and cert["changed_since"]["sme_labels_since"] == 0

    # A snapshot taken after new SME labels says the certificate predates them.
    Review.objects.create(item=Item.objects.filter(reviews__isnull=True).first(), reviewer=lead, decision="accept")
    later = snapshot(project, django_capture_on_commit_callbacks).lineage["certificate"]
    assert later["changed_since"]["stale"] is True and later["changed_since"]["sme_labels_since"] == 1
    assert "Certify again" in later["changed_since"]["statement"]


def test_the_gate_leaves_judge_accepts_below_the_certified_threshold_pending(
    project, lead, django_capture_on_commit_callbacks
):
    p_drawn = np.random.default_rng(7).uniform(0.05, 0.95, 300)
    _, p, _, index = build(
        project, lead, n_items=300, size=150, seed=7, labels=np.where(p_drawn >= 0.7, "accept", "reject")
    )
    truth = ground_truth(project=project)
    judged_accepts = {
        i for i, o in GateDecision.objects.filter(outcome="accept").values_list("item_id", "outcome")
    } - set(truth)
    assert any(p[index[i]] < 0.66 for i in judged_accepts)  # the gate accepted some below the coming threshold
    with django_capture_on_commit_callbacks(execute=True):  # certifying asks for a re-gating
        made = certification_set(project=project, target=0.8, delta=0.1, user=lead)
    rows = {row.item_id: row for row in GateDecision.objects.all()}
    for i in judged_accepts:
        if p[index[i]] >= made.threshold:
            assert rows[i].outcome == "accept" and rows[i].basis in ("judge", "tier")
        else:
            assert rows[i].outcome == "pending" and rows[i].reasons == [gate.CERTIFICATE_REASON]
    for i, label in truth.items():  # SME ground truth is untouched
        assert rows[i].outcome == label
    judge_rejects = [i for i in rows if i not in truth and p[index[i]] < 0.5]
    assert judge_rejects and all(rows[i].outcome == "reject" for i in judge_rejects)
    certified_now = sum(1 for i in judged_accepts if rows[i].outcome == "accept")
    assert certified_now == made.certified

    # A certificate that certifies nothing leaves every judge accept pending; SME accepts stay accepted.
    with django_capture_on_commit_callbacks(execute=True):
        none = certification_set(project=project, target=0.99, delta=0.01, user=lead)
    assert none.threshold is None
    outcomes = dict(GateDecision.objects.values_list("item_id", "outcome"))
    assert all(outcomes[i] == "pending" for i in judged_accepts)
    assert {i for i, o in outcomes.items() if o == "accept"} == {i for i, label in truth.items() if label == "accept"}


def test_decide_holds_back_only_uncertified_judge_accepts():
    judge = dict(ground_truth=None, rule_rejections=[], verdict_basis=gate.Basis.TIER, tier=1)
    assert gate.decide(verdict="accept", certified=False, **judge).outcome == gate.Outcome.PENDING
    assert gate.decide(verdict="accept", certified=True, **judge).outcome == gate.Outcome.ACCEPT
    assert gate.decide(verdict="accept", certified=None, **judge).outcome == gate.Outcome.ACCEPT
    assert gate.decide(verdict="reject", certified=False, **judge).outcome == gate.Outcome.REJECT
    sme = gate.decide(ground_truth="accept", verdict="accept", rule_rejections=[], certified=False)
    assert sme.outcome == gate.Outcome.ACCEPT
    vetoed = gate.decide(ground_truth=None, verdict="accept", rule_rejections=["rule"], certified=False)
    assert vetoed.outcome == gate.Outcome.REJECT


def test_judge_accepts_the_certificate_holds_back_go_to_the_sme_queue_least_certain_first(
    project, lead, django_capture_on_commit_callbacks, caplog
):
    p_drawn = np.random.default_rng(7).uniform(0.05, 0.95, 300)
    _, p, _, index = build(
        project, lead, n_items=300, size=150, seed=7, labels=np.where(p_drawn >= 0.7, "accept", "reject")
    )
    queued_before = set(Item.objects.filter(in_sme_queue()).values_list("id", flat=True))
    with caplog.at_level(logging.INFO, logger="judging.services"):
        with django_capture_on_commit_callbacks(execute=True):
            made = certification_set(project=project, target=0.8, delta=0.1, user=lead)
    held = set(GateDecision.objects.filter(outcome="pending").values_list("item_id", flat=True))
    assert held and all(p[index[i]] < made.threshold for i in held) and not held & queued_before
    rows = {item.pk: item for item in Item.objects.filter(pk__in=held).annotate(in_sme_queue=in_sme_queue())}
    assert all(item.in_sme_queue for item in rows.values())
    for i, item in rows.items():  # 1 - the judge's certainty in its accept: the least certain come first
        assert item.priority == pytest.approx(1 - p[index[i]])
        assert Slot.objects.filter(item_id=i, done=False).count() == project.reviews_per_item
    assert any(
        f"{len(held)} items queued for SME review, {len(held)} of them judge accepts the certificate" in r.getMessage()
        for r in caplog.records
    )
    # The SMEs hand out the least certain held-back item first (the drawn items were labelled and closed).
    Slot.objects.filter(item_id__in=queued_before).update(done=True)
    first = next_item(project=project, reviewer=lead)
    assert first.pk == min(held, key=lambda i: p[index[i]])

    # An SME's decision takes an item out of the pending set; re-gating again queues nothing twice.
    Review.objects.create(item=first, reviewer=lead, decision="accept")
    with django_capture_on_commit_callbacks(execute=True):
        regate_request(project.pk)
    assert GateDecision.objects.get(item=first).outcome == "accept"
    assert sme_queue_prioritise(project=project) == 0
    assert Slot.objects.filter(item_id__in=held).count() == len(held) * project.reviews_per_item


def test_the_page_and_the_api_say_what_changed_since_the_certificate_was_computed(
    client, project, lead, django_capture_on_commit_callbacks
):
    build(project, lead, n_items=120, size=60, seed=4)
    made = certification_set(project=project, target=0.7, delta=0.1, user=lead)
    token, _ = Token.objects.get_or_create(user=lead)
    auth = {"HTTP_AUTHORIZATION": f"Token {token.key}"}

    def since() -> dict:
        return client.get("/api/projects/support/certificate/", **auth).json()["certificate"]["since"]

    fresh = since()
    assert fresh["stale"] is False and fresh["labels_used"] == made.n_labelled
    assert f"Computed from {made.n_labelled} uniform-slice SME labels" in fresh["statement"]
    client.force_login(lead)
    assert "no SME label, gating policy or calibration has changed" in client.get("/projects/support/").content.decode()

    # Two SME labels after it: one on an item a uniform slice drew, one on an item no draw chose.
    drawn = set(SampleMembership.objects.values_list("item_id", flat=True))
    undrawn = Item.objects.exclude(pk__in=drawn).order_by("pk")
    Review.objects.create(item=undrawn[0], reviewer=lead, decision="reject")
    Review.objects.filter(item_id=min(drawn)).update(decision="reject")  # an update() leaves updated_at alone
    review = Review.objects.get(item_id=min(drawn))
    review.decision = "accept"
    review.save()
    labels = since()
    assert (labels["stale"], labels["sme_labels_since"], labels["uniform_slice_labels_since"]) == (True, 2, 1)
    assert "since then 2 SME labels made or changed (1 of them on uniform slices" in labels["statement"]
    assert labels["statement"].endswith("Certify again to use them.")
    assert (labels["policy_changed"], labels["recalibrated_runs"]) == (False, [])

    # The policy's threshold, then its run's calibration.
    run = project.gating_policy.tiers.get().run
    with django_capture_on_commit_callbacks(execute=True):
        gating_policy_set(project=project, tiers=[(run, 0.6)], user=lead)
    policy = since()
    assert policy["policy_changed"] is True and "certainty >= 0.6" in policy["policy_now"]
    Verdict.objects.filter(run=run).update(confidence=F("confidence_calibrated"))
    assert judge_run_calibrate(run=run)["status"] == "calibrated"
    recalibrated = since()
    assert recalibrated["recalibrated_runs"] == [run.pk] and f"calibration of run {run.pk}" in recalibrated["statement"]
    page = client.get("/projects/support/").content.decode()
    assert "Not up to date." in page and "2 SME labels made or changed" in page and "the gating policy changed" in page

    certification_set(project=project, target=0.7, delta=0.1, user=lead)  # a lead certifies again
    assert since()["stale"] is False
    # A lead's adjudication, then its deletion: the item's ground truth changed, though no label row remains.
    adjudication_delete(adjudication=adjudicate(item=undrawn[1], lead=lead, decision="accept"), user=lead)
    assert (since()["stale"], since()["sme_labels_since"]) == (True, 1)
