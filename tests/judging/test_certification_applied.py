"""A certificate binds the exports only once the gate applies it, and only while the policy and calibrations it
was computed on are in force: until its re-gating has run, the export API answers 409 and snapshots fail, and
the certificate API and the project page say it is not applied yet; a changed policy or a refit calibration
voids it, and the gate then holds back every judge accept."""

import io
import json
from datetime import timedelta

import numpy as np
import pytest
from django.core.management import call_command
from django.db.models import F
from django.utils import timezone
from rest_framework.authtoken.models import Token

from annotations.selectors import ground_truth
from judging import gate
from judging.estimate import accepted_set_precision
from judging.models import GateDecision, RegateRequest, Verdict
from judging.selectors import certification_applied, certification_staleness, certification_void
from judging.services import (
    certification_set,
    gating_policy_set,
    judge_run_calibrate,
    judge_run_recalibrate,
    regate_finished,
    regate_request,
)
from tests.judging.test_estimate import build

EXPORT = "/api/projects/support/export/chat.jsonl"
CERTIFICATE = "/api/projects/support/certificate/"


@pytest.fixture
def built(project, lead):
    p_drawn = np.random.default_rng(7).uniform(0.05, 0.95, 300)
    return build(project, lead, n_items=300, size=150, seed=7, labels=np.where(p_drawn >= 0.7, "accept", "reject"))


@pytest.fixture
def auth(lead):
    return {"HTTP_AUTHORIZATION": f"Token {Token.objects.get_or_create(user=lead)[0].key}"}


def exported_prompts(client, auth) -> set[str]:
    response = client.get(EXPORT, **auth)
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    return {json.loads(line)["messages"][0]["content"] for line in body.splitlines()}


def judge_accepts(project) -> set[int]:
    truth = ground_truth(project=project)
    return {
        pk
        for pk, outcome, basis in GateDecision.objects.values_list("item_id", "outcome", "basis")
        if pk not in truth and outcome == "accept" and basis in ("judge", "tier")
    }


def test_exports_refuse_a_certificate_the_gate_has_not_applied(
    client, project, lead, built, auth, django_capture_on_commit_callbacks
):
    before = exported_prompts(client, auth)
    accepted_before = judge_accepts(project)
    # Certified over the API; its re-gating is asked for but never runs (a dead worker, a slow queue).
    made = client.post(CERTIFICATE, {"target": 0.8, "delta": 0.1}, content_type="application/json", **auth)
    assert made.status_code == 201, made.content
    cert = made.json()["certificate"]
    generation = RegateRequest.objects.get(project=project).generation
    assert cert["result"]["regate_generation"] == generation and cert["threshold"] is not None
    assert cert["applied"]["applied"] is False and cert["applied"]["generation"] == generation
    held = cert["held_back"]
    assert held["applied"] is False and held["queued"] is None and "Not applied yet" in held["statement"]
    # What the certificate implies, not the stored decisions' count (which predates it: nothing held back).
    implied = held["pending"]
    assert implied > 0 and not GateDecision.objects.filter(reasons__contains=[gate.CERTIFICATE_REASON]).exists()

    refused = client.get(EXPORT, **auth)
    assert refused.status_code == 409 and refused["Content-Type"].startswith("application/json")
    detail = refused.json()["detail"]
    assert "the gate is still applying the certificate chosen at" in detail
    assert "Re-gate from the project page" in detail
    assert client.get(CERTIFICATE, **auth).json()["certificate"]["applied"]["applied"] is False
    client.force_login(lead)
    page = client.get("/projects/support/").content.decode()
    assert "Not applied yet." in page and f"Once applied, {implied} judge accepts" in page
    assert f"Re-gating: {generation} requested, {generation - 1} done (not done yet" in page

    # An older re-gating that ends late does not count for it, nor move the count backwards.
    regate_finished(project_id=project.pk, generation=generation - 1)
    assert RegateRequest.objects.get(project=project).last_generation_done == generation - 1
    assert client.get(EXPORT, **auth).status_code == 409

    with django_capture_on_commit_callbacks(execute=True):
        regate_request(project.pk)  # the re-gate button
    regate_finished(project_id=project.pk, generation=generation)  # a stale task ending after
    assert RegateRequest.objects.get(project=project).last_generation_done == generation + 1
    now = client.get(CERTIFICATE, **auth).json()["certificate"]
    assert now["applied"] == {"applied": True, "generation": generation, "done": generation + 1, "statement": ""}
    assert now["held_back"]["applied"] is True and now["held_back"]["pending"] == implied
    after = exported_prompts(client, auth)
    assert len(before) - len(after) == implied == len(accepted_before - judge_accepts(project))
    assert "Not applied yet." not in client.get("/projects/support/").content.decode()


def test_a_changed_policy_voids_the_certificate_and_the_gate_certifies_nothing(
    client, project, lead, built, auth, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        made = certification_set(project=project, target=0.8, delta=0.1, user=lead)
    assert made.threshold is not None and made.result["basis"]["policy"] == made.policy
    certified = judge_accepts(project)
    assert len(certified) == made.certified > 0
    assert certification_void(made)["void"] is False

    run = project.gating_policy.tiers.get().run
    with django_capture_on_commit_callbacks(execute=True):
        gating_policy_set(project=project, tiers=[(run, 0.6)], user=lead)
    void = certification_void(made)
    assert void["void"] and void["policy_changed"] and void["recalibrated_runs"] == []
    assert f"computed for policy “{made.policy}”" in void["reason"] and "certify again" in void["reason"]
    # The gate holds back every judge accept (an old threshold on a new policy certifies nothing).
    assert judge_accepts(project) == set()
    held = GateDecision.objects.filter(reasons=[gate.CERTIFICATE_REASON]).count()
    assert held > 0 and accepted_set_precision(project)["accepted"]["estimated"] == 0
    body = client.get(CERTIFICATE, **auth).json()["certificate"]
    assert body["since"]["void"] is True and body["since"]["void_reason"] == void["reason"]
    assert body["applied"]["applied"] is True and body["held_back"]["pending"] == held
    truth = ground_truth(project=project)
    assert len(exported_prompts(client, auth)) == sum(label == "accept" for label in truth.values())
    client.force_login(lead)
    page = client.get("/projects/support/").content.decode()
    assert "Certifies nothing now." in page and "certify again" in page and "(all of them)" in page


def test_a_refit_calibration_voids_the_certificate_until_a_lead_certifies_again(
    client, project, lead, built, auth, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        made = certification_set(project=project, target=0.8, delta=0.1, user=lead)
    run = project.gating_policy.tiers.get().run
    fitted_then = made.result["basis"]["calibrations"][str(run.pk)]
    Verdict.objects.filter(run=run).update(confidence=F("confidence_calibrated"))

    # A refit with no re-gating asked for: void, and the stored decisions still apply the old threshold.
    assert judge_run_calibrate(run=run)["status"] == "calibrated"
    void = certification_void(made)
    assert void["void"] and void["recalibrated_runs"] == [run.pk] and not void["policy_changed"]
    assert f"run {run.pk} fitted {fitted_then or 'never'}" in void["reason"]
    assert certification_applied(made)["applied"] is False
    refused = client.get(EXPORT, **auth)
    assert refused.status_code == 409 and "voiding of the certificate" in refused.json()["detail"]
    with django_capture_on_commit_callbacks(execute=True):
        regate_request(project.pk)
    assert certification_applied(made)["applied"] is True and judge_accepts(project) == set()
    assert certification_staleness(made)["void"] is True

    # A lead's recalibration (a policy change, logged and re-gated) keeps it void; certifying again ends it.
    with django_capture_on_commit_callbacks(execute=True):
        judge_run_recalibrate(run=run, user=lead)
    assert certification_void(made)["void"] and judge_accepts(project) == set()
    with django_capture_on_commit_callbacks(execute=True):
        again = certification_set(project=project, target=0.8, delta=0.1, user=lead)
    assert certification_void(again)["void"] is False and certification_applied(again)["applied"] is True
    assert len(judge_accepts(project)) == again.certified and client.get(EXPORT, **auth).status_code == 200


def test_a_re_gating_run_in_place_applies_the_certificate(client, project, lead, built, auth):
    made = certification_set(project=project, target=0.8, delta=0.1, user=lead)  # its queued re-gating never runs
    assert certification_applied(made)["applied"] is False and client.get(EXPORT, **auth).status_code == 409
    out = io.StringIO()
    call_command("apply_rules", "support", stdout=out)  # runs here, and records the requests it covered
    assert "gate:" in out.getvalue()
    assert certification_applied(made)["applied"] is True
    assert len(judge_accepts(project)) == made.certified and client.get(EXPORT, **auth).status_code == 200


def test_a_certificate_stored_before_generations_and_basis_were_recorded(
    project, lead, built, django_capture_on_commit_callbacks
):
    made = certification_set(project=project, target=0.8, delta=0.1, user=lead)  # its re-gating never runs
    for key in ("regate_generation", "basis"):
        made.result.pop(key)
    made.save()
    RegateRequest.objects.filter(project=project).update(last_finished_at=made.created_at - timedelta(seconds=1))
    assert certification_applied(made) | {"statement": ""} == {
        "applied": False,
        "generation": None,
        "done": RegateRequest.objects.get(project=project).last_generation_done,
        "statement": "",
    }
    with django_capture_on_commit_callbacks(execute=True):
        regate_request(project.pk)
    assert certification_applied(made)["applied"] is True and len(judge_accepts(project)) == made.certified
    # Without a recorded basis, a calibration fitted after the certificate voids it.
    run = project.gating_policy.tiers.get().run
    run.calibration = {**(run.calibration or {}), "fitted_at": timezone.now().isoformat()}
    run.save()
    assert certification_void(made)["recalibrated_runs"] == [run.pk]
    with django_capture_on_commit_callbacks(execute=True):
        regate_request(project.pk)
    assert judge_accepts(project) == set()
