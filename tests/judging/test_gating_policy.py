"""The gating policy: a lead chooses which runs decide, every change is logged, nothing takes over by itself."""

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token

from annotations.models import Review, Slot
from annotations.queue import in_sme_queue
from judging import gate
from judging.models import GateDecision, GatingPolicyChange, JudgeRun, RegateRequest, Verdict
from judging.selectors import gating_policy
from judging.services import PolicyError, gating_policy_set, judge_run_finish_if_complete, regate_request
from tests.conftest import make_items, use_judge, use_run

RESPONSES = [f"answer {i}" for i in range(8)]
# The SMEs reviewed 0-3; the good judge agrees with them and rejects 4 and 5; the always-accept judge accepts all.
SME = ["accept", "reject", "accept", "reject"]
GOOD = ["accept", "reject", "accept", "reject", "reject", "reject", "accept", "accept"]


def finished_run(project, verdicts, model="judge", confidences=None) -> JudgeRun:
    run = JudgeRun.objects.create(
        project=project, backend="openai", model=model, base_url="http://j/v1", status="finished"
    )
    items = list(project.items.order_by("id"))
    Verdict.objects.bulk_create(
        Verdict(
            run=run,
            item=item,
            verdict=v,
            confidence=confidences[i] if confidences else None,
            confidence_calibrated=confidences[i] if confidences else None,
        )
        for i, (item, v) in enumerate(zip(items, verdicts, strict=True))
    )
    return run


@pytest.fixture
def items(project):
    items = make_items(project, RESPONSES)
    for item, decision in zip(items, SME, strict=False):
        Review.objects.create(item=item, decision=decision, origin="import")
    return items


def outcomes() -> dict[str, str]:
    return dict(GateDecision.objects.values_list("item__response", "outcome"))


def test_a_second_finished_run_does_not_change_the_gate_until_a_lead_chooses_it(
    project, items, lead, django_capture_on_commit_callbacks
):
    good = finished_run(project, GOOD, model="good")
    use_run(good, user=lead)
    assert outcomes()["answer 4"] == "reject" and outcomes()["answer 6"] == "accept"
    # The always-accept run finishes (as the last chunk of a real run would report it): it re-gates...
    always = JudgeRun.objects.create(project=project, backend="openai", model="always", status="running")
    Verdict.objects.bulk_create(Verdict(run=always, item=i, verdict="accept") for i in items)
    always.items_total = len(items)
    always.save()
    with django_capture_on_commit_callbacks(execute=True) as queued:
        assert judge_run_finish_if_complete(run_id=always.pk)
    assert len(queued) == 1  # a queued re-gating, not one inside the task
    # ...but the good run still decides: nothing the good judge rejected is accepted.
    assert outcomes()["answer 4"] == outcomes()["answer 5"] == "reject"
    assert gating_policy(project).tiers.get().run == good
    # A lead chooses the new run: now it decides, and the choice is in the log with who, from and to.
    always.refresh_from_db()
    use_run(always, user=lead)
    assert outcomes()["answer 4"] == "accept"
    change = GatingPolicyChange.objects.first()
    assert change.changed_by == lead
    assert [t["run"] for t in change.before["tiers"]] == [good.pk]
    assert [t["run"] for t in change.after["tiers"]] == [always.pk]
    assert GatingPolicyChange.objects.count() == 2


def test_with_no_policy_only_smes_and_rules_decide(project, items, django_capture_on_commit_callbacks):
    run = JudgeRun.objects.create(project=project, backend="openai", model="m", status="running", items_total=8)
    Verdict.objects.bulk_create(Verdict(run=run, item=i, verdict="accept") for i in items)
    with django_capture_on_commit_callbacks(execute=True):
        judge_run_finish_if_complete(run_id=run.pk)
    assert outcomes() == {
        **{f"answer {i}": d for i, d in enumerate(SME)},
        **{f"answer {i}": "pending" for i in range(4, 8)},
    }


def test_setting_a_policy_refuses_what_cannot_gate(project, items, staff):
    from annotations.models import Project

    other = Project.objects.create(slug="other", name="Other")
    make_items(other, RESPONSES)
    foreign = finished_run(other, GOOD)
    running = JudgeRun.objects.create(project=project, backend="openai", model="m", status="running")
    good = finished_run(project, GOOD)
    for tiers, message in [
        ([(foreign, None)], "not a run of project support"),
        ([(running, None)], "is running: only a finished run"),
        ([(good, 0.3)], "0.5 to 1"),
        ([(good, None), (good, 0.9)], "only one tier"),
    ]:
        with pytest.raises(PolicyError, match=message):
            gating_policy_set(project=project, tiers=tiers, user=staff)
    assert not GatingPolicyChange.objects.exists()


def test_a_run_in_force_cannot_be_deleted(project, items):
    from django.db.models import RestrictedError

    good = finished_run(project, GOOD)
    use_run(good)
    with pytest.raises(RestrictedError):
        good.delete()


def test_the_first_tier_sure_enough_decides_and_the_rest_is_pending(project, items, lead):
    # Tier 1 is sure (0.95) only on items 4 and 6; tier 2 says the opposite of tier 1, sure only on 5.
    small = finished_run(project, GOOD, "small", [0.5, 0.5, 0.5, 0.5, 0.05, 0.4, 0.95, 0.6])
    big = finished_run(
        project, ["reject" if v == "accept" else "accept" for v in GOOD], "big", [0.5] * 5 + [0.99, 0.5, 0.5]
    )
    gating_policy_set(project=project, tiers=[(small, 0.9), (big, 0.9)], user=lead)
    from judging.services import gate_apply

    gate_apply(project=project)
    got = {
        d.item.response: (d.outcome, d.basis, d.tier, d.judge_run_id)
        for d in GateDecision.objects.select_related("item")
    }
    assert got["answer 4"] == ("reject", "tier", 1, small.pk)
    assert got["answer 6"] == ("accept", "tier", 1, small.pk)
    assert got["answer 5"] == ("accept", "tier", 2, big.pk)
    assert got["answer 7"] == ("pending", "none", None, None)
    assert got["answer 0"][:2] == ("accept", "sme")


def test_pending_items_reach_the_sme_queue_least_certain_first(
    project, items, lead, django_capture_on_commit_callbacks
):
    # Items 4-7 are undecided below the threshold, with certainties in their verdicts of 0.85, 0.45 (a reject the
    # judge gives P(accept) 0.55: it doubts it), none, 0.7.
    small = finished_run(project, GOOD, "small", [0.5, 0.5, 0.5, 0.5, 0.15, 0.55, None, 0.7])
    with django_capture_on_commit_callbacks(execute=True):
        gating_policy_set(project=project, tiers=[(small, 0.9)], user=lead)
    pending = project.items.filter(gate_decision__outcome="pending")
    assert set(pending.values_list("response", flat=True)) == {"answer 4", "answer 5", "answer 6", "answer 7"}
    assert all(pending.annotate(q=in_sme_queue()).values_list("q", flat=True))
    order = list(pending.order_by("-priority", "id").values_list("response", "priority"))
    assert [r for r, _ in order] == ["answer 6", "answer 5", "answer 7", "answer 4"]
    assert [round(p, 2) for _, p in order] == [1.0, 0.55, 0.3, 0.15]
    slots = Slot.objects.filter(item__response="answer 6", done=False)
    assert slots.exists() and {s.priority for s in slots} == {1.0}


def test_a_superseded_regating_skips_and_a_failed_one_is_recorded(project, items, monkeypatch, lead, client):
    from judging import services, tasks

    calls = []
    monkeypatch.setattr(services, "project_regate", lambda *, project: calls.append(project.pk) or (0, {}))
    first = regate_request(project.pk)  # not run: no commit inside the test's transaction
    second = regate_request(project.pk)
    tasks.regate_project(project.pk, first)
    assert calls == []  # superseded
    tasks.regate_project(project.pk, second)
    assert calls == [project.pk]

    def fails(*, project):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(services, "project_regate", fails)
    with pytest.raises(RuntimeError):
        tasks.regate_project.apply(args=(project.pk, second), throw=True)
    assert RegateRequest.objects.get(project=project).last_error == "RuntimeError: the database went away"
    client.force_login(lead)
    page = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    assert "the last re-gating failed: RuntimeError: the database went away" in page


def test_an_uncalibrated_verdict_never_decides_a_tier():
    uncalibrated = gate.TierVerdict("accept", None, 0.8)
    assert gate.tier_verdict([uncalibrated, gate.TierVerdict("reject", 0.1, 0.8)]) == (1, "reject")


@pytest.mark.parametrize(("who", "status"), [("outsider", 404), ("sme", 403), ("lead", 200), ("staff", 200)])
def test_the_policy_page_is_for_leads_and_staff(client, project, items, request, who, status):
    user = request.getfixturevalue(who)
    client.force_login(user)
    url = reverse("judging:gating_policy", args=[project.slug])
    assert client.get(url).status_code == status
    run = finished_run(project, GOOD)
    assert client.post(url, {"run": run.pk}).status_code == (302 if status == 200 else status)
    assert GatingPolicyChange.objects.exists() == (status == 200)


def test_the_policy_page_shows_candidates_with_kappa_and_n_and_a_lead_chooses_one(
    client, project, items, lead, django_capture_on_commit_callbacks
):
    good = finished_run(project, GOOD, "good-judge")
    always = finished_run(project, ["accept"] * 8, "always-accept")
    client.force_login(lead)
    url = reverse("judging:gating_policy", args=[project.slug])
    page = client.get(url).content.decode()
    assert "None." in page and "good-judge" in page and "always-accept" in page
    assert "1.000 (" in page  # the good judge's kappa on the 4 SME items, with its interval
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"run": always.pk}, follow=True)
    assert "now gates the project" in response.content.decode()
    assert outcomes()["answer 4"] == "accept"
    page = client.get(url).content.decode()
    assert "in force" in page and "lead" in page
    funnel_page = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    assert f"run {always.pk} (always-accept at http://j/v1)" in funnel_page
    assert good.pk != always.pk


@pytest.mark.parametrize(("who", "status"), [("outsider", 404), ("sme", 403), ("lead", 200), ("staff", 200)])
def test_the_policy_api_reads_for_leads_and_sets_with_a_log(client, project, items, request, who, status):
    user = request.getfixturevalue(who)
    auth = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=user).key}"}
    url = f"/api/projects/{project.slug}/gating-policy/"
    got = client.get(url, **auth)
    assert got.status_code == status
    run = finished_run(project, GOOD)
    posted = client.post(url, {"tiers": [{"run": run.pk, "threshold": None}]}, content_type="application/json", **auth)
    assert posted.status_code == status
    if status == 200:
        body = posted.json()
        assert body["policy"]["tiers"][0]["run"] == run.pk
        assert body["changes"][0]["changed_by"] == who
        bad = client.post(url, {"tiers": [{"run": 999999}]}, content_type="application/json", **auth)
        assert bad.status_code == 400 and "no judge run 999999" in bad.content.decode()


def test_a_lead_sets_a_cascade_and_escalates_from_the_page(
    client, project, items, lead, judge_server, django_capture_on_commit_callbacks
):
    sure = [0.99, 0.01, 0.98, 0.02, 0.6, 0.3, 0.97, 0.99]  # calibrated P(accept) of the good judge
    good = finished_run(project, GOOD, "good-judge", confidences=sure)
    client.force_login(lead)
    url = reverse("judging:gating_policy", args=[project.slug])
    page = client.get(url).content.decode()
    assert "ECE" in page and "not calibrated" not in page  # the candidate's calibration beside its agreement
    for data, error in [
        ({"action": "cascade", "tier": ["", ""], "target": "0.9", "risk": "0.1"}, "Choose at least the first tier"),
        ({"action": "cascade", "tier": [good.pk], "target": "x", "risk": "0.1"}, "target agreement &#x27;x&#x27; is"),
        ({"action": "cascade", "tier": [good.pk], "target": "0.9", "risk": "2"}, "risk must be between 0 and 1"),
        ({"action": "cascade", "tier": [99999], "target": "0.9", "risk": "0.1"}, "No run 99999 in this project"),
        ({"action": "launch"}, "Unknown action"),
    ]:
        assert error in client.post(url, data, follow=True).content.decode()
    assert not GatingPolicyChange.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post(
            url, {"action": "cascade", "tier": [good.pk, ""], "target": "0.9", "risk": "0.1"}, follow=True
        ).content.decode()
    assert "Cascade set" in page
    (tier,) = gating_policy(project).tiers.all()
    assert not tier.decides and "22" in tier.note  # 4 SME labels cannot certify 0.9 at risk 0.1: it says so
    assert GatingPolicyChange.objects.get().changed_by == lead
    # Deciding nothing, the tier escalates every item; a judge that does not answer starts no run.
    endpoint = use_judge(project, "http://127.0.0.1:9/v1", "big")
    page = client.post(url, {"action": "escalate", "endpoint": endpoint.pk}, follow=True).content.decode()
    assert "did not answer" in page and not JudgeRun.objects.filter(model="big").exists()
    endpoint.base_url = judge_server.base_url
    endpoint.save()
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post(url, {"action": "escalate", "endpoint": endpoint.pk}, follow=True).content.decode()
    run = JudgeRun.objects.get(model="big")
    assert f"Run {run.pk}" in page and run.items_total == 8 and run.config["escalated_from"][0]["run"] == good.pk
    page = client.post(url, {"action": "escalate", "endpoint": endpoint.pk}, follow=True).content.decode()
    assert f"run {run.pk} already judges what this policy escalates" in page  # a double click starts no second run
    assert JudgeRun.objects.filter(model="big").count() == 1


def test_the_api_chooses_thresholds_when_asked(client, project, items, lead):
    good = finished_run(project, GOOD, "good-judge", confidences=[0.99, 0.01, 0.98, 0.02, 0.6, 0.3, 0.97, 0.99])
    client.force_login(lead)
    url = f"/api/projects/{project.slug}/gating-policy/"
    for body in [
        {"tiers": [{"run": good.pk}], "choose_thresholds": True},
        {
            "tiers": [{"run": good.pk, "threshold": 0.9}],
            "target_agreement": 0.9,
            "risk": 0.1,
            "choose_thresholds": True,
        },
        {"tiers": [{"run": good.pk}], "target_agreement": 1.0, "risk": 0.1},
        {"tiers": [{"run": good.pk}], "target_agreement": 0.9, "risk": 1e-300},
    ]:
        assert client.post(url, body, content_type="application/json").status_code == 400, body
    body = {"tiers": [{"run": good.pk}], "target_agreement": 0.9, "risk": 0.1, "choose_thresholds": True}
    response = client.post(url, body, content_type="application/json")
    assert response.status_code == 200
    (tier,) = gating_policy(project).tiers.all()
    assert not tier.decides and "22" in tier.note  # chosen, not "by its verdict alone": too few labels, said so


def test_a_tier_never_decides_a_verdict_its_own_confidence_contradicts(project, items, lead):
    """An accept with calibrated P(accept) 0.02 is 0.98 sure the other way: it must not pass a 0.9 threshold."""
    doubtful = finished_run(project, ["accept"] * 8, "doubtful", [0.5, 0.5, 0.5, 0.5, 0.02, 0.97, 0.5, 0.5])
    gating_policy_set(project=project, tiers=[(doubtful, 0.9)], user=lead)
    from judging.services import gate_apply

    gate_apply(project=project)
    assert outcomes()["answer 4"] == "pending" and outcomes()["answer 5"] == "accept"
    assert gate.verdict_certainty("accept", 0.02) == pytest.approx(0.02)
    assert gate.verdict_certainty("reject", 0.02) == pytest.approx(0.98)


def test_recalibrating_a_run_in_force_is_a_logged_policy_change_and_a_regating(
    project, items, lead, django_capture_on_commit_callbacks
):
    run = finished_run(project, GOOD, "good", [0.9, 0.1, 0.9, 0.1, 0.2, 0.3, 0.8, 0.7])
    gating_policy_set(project=project, tiers=[(run, 0.6)], user=lead)
    changes = GatingPolicyChange.objects.count()
    generation = regate_request(project.pk)
    from judging.services import judge_run_recalibrate

    with django_capture_on_commit_callbacks(execute=False):
        summary = judge_run_recalibrate(run=run, user=lead)
    assert summary["status"] == "not_enough_labels"  # 2 accepts and 2 rejects: calibrated values are cleared
    change = GatingPolicyChange.objects.first()
    assert GatingPolicyChange.objects.count() == changes + 1 and change.changed_by == lead
    assert RegateRequest.objects.get(project=project).generation == generation + 1
