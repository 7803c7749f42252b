"""Teacher runs over REST and on the project page: who may start and see them, progress, cancel, and what the
gate made of the answers (leads and staff only: SMEs review blind)."""

import pytest
from django.urls import reverse

from annotations.models import Item
from distillation.models import TeacherRun
from judging.models import GateDecision
from tests.conftest import make_items, use_judge
from tests.distillation.test_teacher_runs import use_teacher

pytestmark = pytest.mark.django_db


def api(slug: str, *rest) -> str:
    return reverse("teacher-run-list", args=[slug]) + "".join(f"{part}/" for part in rest)


def test_only_leads_and_staff_reach_teacher_runs(client, project, sme, outsider, lead, judge_server):
    use_teacher(project, judge_server.base_url)
    part = reverse("distillation:teacher_runs", args=[project.slug])
    for user, status in ((outsider, 404), (sme, 403)):
        client.force_login(user)
        assert client.get(api(project.slug)).status_code == status
        assert client.post(api(project.slug), {"items": "all"}, content_type="application/json").status_code == status
        assert client.get(part).status_code == status
        assert client.post(part, {"items": "all"}).status_code == status
    assert not TeacherRun.objects.exists()
    client.force_login(lead)
    assert client.get(api(project.slug)).status_code == 200
    assert client.get(part).status_code == 200


def test_a_lead_starts_follows_and_cancels_a_run_over_rest(
    client, project, lead, judge_server, django_capture_on_commit_callbacks, settings
):
    client.force_login(lead)
    settings.LARRY_TEACHER_BASE_URL = settings.LARRY_TEACHER_MODEL = ""
    response = client.post(api(project.slug), {"items": "all"}, content_type="application/json")
    assert response.status_code == 400 and "has no teacher" in response.json()["detail"]
    use_teacher(project, judge_server.base_url)
    items = make_items(project, ["a", "b", "c"])
    Item.objects.filter(pk=items[2].pk).update(prompt="Q [t-length]?")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            api(project.slug), {"item_ids": [items[0].pk, items[2].pk]}, content_type="application/json"
        )
    assert response.status_code == 201, response.content
    run_id = response.json()["id"]
    body = client.get(api(project.slug, run_id)).json()
    assert (body["status"], body["selection"], body["items_total"], body["items_done"]) == ("finished", "items", 2, 2)
    assert (body["answers_written"], body["answers_failed"], body["percent_done"]) == (1, 1, 100)
    assert body["report"]["failures"] == {"truncated reply": 1}
    assert body["report"]["pending"] == 1 and "api_key" not in body["config"]
    assert client.get(api(project.slug)).json()["results"][0]["id"] == run_id
    assert client.post(api(project.slug, run_id, "cancel")).status_code == 409
    bad = client.post(api(project.slug), {"items": "some"}, content_type="application/json")
    assert bad.status_code == 400 and "items" in bad.json()


def test_the_page_shows_what_the_gate_made_of_the_answers_and_a_self_judging_teacher(
    client, project, lead, judge_server, start_run, django_capture_on_commit_callbacks
):
    """Four originals, all rejected by the judge; the teacher answers them (one answer WRONG), a judge run over
    everything becomes the policy: 3 of 4 answers accepted, 1 rejected; the originals 0 of 4 on those prompts."""
    use_teacher(project, judge_server.base_url, model="test-judge")  # the same model as the judge
    make_items(project, ["WRONG 1", "WRONG 2", "WRONG 3", "WRONG 4"])
    Item.objects.filter(external_id="r3").update(prompt="Q [t-bad]?")
    use_judge(project, judge_server.base_url)
    start_run(project, use=True)
    assert GateDecision.objects.filter(outcome="reject").count() == 4
    client.force_login(lead)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("distillation:teacher_runs", args=[project.slug]), {"items": "rejected"})
    run = TeacherRun.objects.get()
    assert run.answers_written == 4
    # The answers wait for a judge: pending until a run of the policy covers them.
    assert GateDecision.objects.filter(item__answers__isnull=False, outcome="pending").count() == 4
    start_run(project, use=True)
    page = client.get(reverse("distillation:teacher_runs", args=[project.slug])).content.decode()
    row = page[page.index(f'data-run="{run.pk}"') :]
    cells = [c.split("</td>")[0].strip() for c in row.split("<td>")[1:]][4:9]
    assert cells[:5] == ["4", "0", "3", "0", "1"]  # written, not stored, accepted, vetoed, rejected
    assert "0.75 vs 0.00 (n = 4: too few to mean much)" in page
    assert 'data-testid="self-judged"' in page and "judged by the teacher's own model" in page


def test_an_sme_reviews_a_teacher_answer_blind(client, project, sme, judge_server, django_capture_on_commit_callbacks):
    from annotations.queue import queue_add
    from distillation.teacher_runs import teacher_run_create

    use_teacher(project, judge_server.base_url, model="sensei-405b")
    make_items(project, ["Plus costs $9."], prompt="How much is Plus? [t-reasoning]")
    with django_capture_on_commit_callbacks(execute=True):
        teacher_run_create(project=project, selection="all")
    answer = Item.objects.get(answers__isnull=False)
    queue_add(project=project, item_ids=[answer.pk])
    client.force_login(sme)
    page = client.get(reverse("annotations:review", args=[project.slug])).content.decode()
    assert answer.response in page.replace("&#x27;", "'")
    for telltale in ("sensei-405b", "teacher", "Teacher", answer.external_id, answer.reasoning):
        assert telltale not in page


def test_the_items_api_links_a_prompt_and_its_teacher_answers_both_ways(
    client, project, lead, judge_server, django_capture_on_commit_callbacks
):
    from distillation.teacher_runs import teacher_run_create

    use_teacher(project, judge_server.base_url)
    original, other = make_items(project, ["WRONG", "fine"], prompt="How much is Plus? [t-reasoning]")
    with django_capture_on_commit_callbacks(execute=True):
        teacher_run_create(project=project, selection="items", item_ids=[original.pk])
    with django_capture_on_commit_callbacks(execute=True):
        teacher_run_create(project=project, selection="items", item_ids=[original.pk])
    answers = list(Item.objects.filter(answers=original).order_by("id"))
    assert len(answers) == 2 and all(a.reasoning for a in answers)
    client.force_login(lead)
    items_url = reverse("item-list", args=[project.slug])
    body = {row["id"]: row for row in client.get(items_url, {"page_size": 50}).json()["results"]}
    assert body[original.pk]["answers"] == [a.pk for a in answers]
    assert body[original.pk]["answers_item"] is None and body[original.pk]["reasoning"] == ""
    assert body[other.pk]["answers"] == []
    for answer in answers:
        row = client.get(f"{items_url}{answer.pk}/").json()
        assert (row["answers_item"], row["answers"], row["reasoning"]) == (original.pk, [], answer.reasoning)
