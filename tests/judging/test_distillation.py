"""The local classifier learns from a big judge's verdicts as well as the SME labels (distillation).

The test judge server plays the big judge: it rejects every item whose text says WRONG. The SMEs labelled
six items, one of them against the big judge (an SME label wins over the judge's verdict).
"""

import io

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotations.models import Review
from judging.models import JudgeRun, Verdict
from judging.selectors import run_agreement
from judging.services import LearnFromError, judge_run_create
from tests.conftest import make_items, use_judge

TOPICS = ["billing", "refunds", "passwords", "invoices", "exports", "accounts", "plans", "storage"]


def responses(n: int) -> list[str]:
    """Every third answer says WRONG (the big judge rejects those); the words around it vary."""
    return [
        f"About {TOPICS[i % 8]} and {TOPICS[(i * 3 + 1) % 8]}: "
        + ("WRONG, that setting does not exist." if i % 3 == 0 else "open settings, then save.")
        for i in range(n)
    ]


@pytest.fixture
def judged(project, judge_server, start_run):
    """80 items, 6 SME labels (item 1 rejected by the SMEs though the big judge accepts it), a big-judge run."""
    items = make_items(project, responses(80))
    labels = {0: "reject", 1: "reject", 2: "accept", 3: "reject", 4: "accept", 5: "accept"}
    for i, decision in labels.items():
        Review.objects.create(item=items[i], decision=decision, origin="import")
    use_judge(project, judge_server.base_url, model="big")
    big = start_run(project)
    assert big.status == "finished" and big.backend == "openai"
    return items, big


def distil(project, big, django_capture_on_commit_callbacks, **kwargs) -> JudgeRun:
    with django_capture_on_commit_callbacks(execute=True):
        run = judge_run_create(project=project, learn_from=big, **kwargs)
    run.refresh_from_db()
    return run


def test_a_local_run_learns_from_the_big_judge_and_agrees_with_it_on_most_items(
    project, judged, django_capture_on_commit_callbacks
):
    items, big = judged
    run = distil(project, big, django_capture_on_commit_callbacks)
    assert run.status == "finished", run.error
    assert run.backend == JudgeRun.Backend.LOCAL  # the project's judge is the big one: learn_from means local
    assert run.config["learn_from_run"] == big.pk
    assert (run.config["sme_labels"], run.config["teacher_labels"], run.config["teacher_overruled"]) == (6, 74, 1)
    assert run.learned_from == f"6 SME labels and 74 verdicts of run {big.pk} ({big.judge_label})"

    teacher = dict(Verdict.objects.filter(run=big).values_list("item_id", "verdict"))
    student = dict(Verdict.objects.filter(run=run).values_list("item_id", "verdict"))
    unlabelled = [item.pk for item in items[6:]]
    agree = sum(student[i] == teacher[i] for i in unlabelled)
    assert agree / len(unlabelled) >= 0.9, f"{agree} of {len(unlabelled)}"
    # Every item with a training label (here all) was judged by a model fit without its label.
    assert all("out-of-fold" in r for r in Verdict.objects.filter(run=run).values_list("rationale", flat=True))
    # So its agreement with the SMEs is measured on all six SME items.
    assert run_agreement(run)["n"] == 6


def test_with_sme_labels_only_the_classifier_could_not_have_learned_this_much(
    project, judged, django_capture_on_commit_callbacks
):
    """Against a control: six SME labels alone teach it less of the big judge's verdicts than distillation."""
    items, big = judged
    with django_capture_on_commit_callbacks(execute=True):
        alone = judge_run_create(project=project, local=True)
    alone.refresh_from_db()
    assert alone.backend == JudgeRun.Backend.LOCAL and "learn_from_run" not in alone.config
    assert alone.learned_from == "6 SME labels"
    distilled = distil(project, big, django_capture_on_commit_callbacks)
    teacher = dict(Verdict.objects.filter(run=big).values_list("item_id", "verdict"))

    def agreement(run):
        said = dict(Verdict.objects.filter(run=run).values_list("item_id", "verdict"))
        return sum(said[item.pk] == teacher[item.pk] for item in items[6:])

    assert agreement(distilled) > agreement(alone)


def test_it_learns_only_from_a_finished_llm_run_of_the_project(project, judged, django_capture_on_commit_callbacks):
    _, big = judged
    local = distil(project, big, django_capture_on_commit_callbacks)
    with pytest.raises(LearnFromError, match="local classifier's"):
        judge_run_create(project=project, learn_from=local)
    running = JudgeRun.objects.create(project=project, backend="openai", model="big", status="running")
    with pytest.raises(LearnFromError, match="finished"):
        judge_run_create(project=project, learn_from=running)


def test_the_run_page_says_what_it_learned_from(client, staff, project, judged, django_capture_on_commit_callbacks):
    _, big = judged
    run = distil(project, big, django_capture_on_commit_callbacks)
    client.force_login(staff)
    page = client.get(run.get_absolute_url()).content.decode()
    assert f"6 SME labels and 74 verdicts of run {big.pk}" in page
    assert "an SME label wins" in page and "overruled 1" in page


def test_leads_start_a_distilled_run_from_the_project_page(
    client, sme, lead, project, judged, django_capture_on_commit_callbacks
):
    _, big = judged
    url = reverse("judging:judge_run_start", args=[project.slug])
    client.force_login(lead)
    page = client.get(project.get_absolute_url()).content.decode()
    assert f'<option value="{big.pk}">the verdicts of run {big.pk}' in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"local": "1", "learn_from": str(big.pk)})
    run = JudgeRun.objects.order_by("-id").first()
    assert response.status_code == 302 and response.url == run.get_absolute_url()
    assert run.backend == "local" and run.config["learn_from_run"] == big.pk
    assert client.post(url, {"local": "1", "learn_from": "x"}).status_code == 400
    client.force_login(sme)
    assert client.post(url, {"local": "1", "learn_from": str(big.pk)}).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_run_judge_learn_from(project, judged):
    _, big = judged
    out = io.StringIO()
    call_command(
        "run_judge", project.slug, "--learn-from", str(big.pk), "--timeout", "60", stdout=out, stderr=io.StringIO()
    )
    run = JudgeRun.objects.order_by("-id").first()
    assert run.backend == "local" and run.config["learn_from_run"] == big.pk
    assert f"it learned from 6 SME labels and 74 verdicts of run {big.pk}" in out.getvalue()
    with pytest.raises(CommandError, match="local classifier's"):
        call_command("run_judge", project.slug, "--learn-from", str(run.pk), stdout=io.StringIO())


def test_the_api_starts_a_distilled_run(client, staff, project, judged, django_capture_on_commit_callbacks):
    _, big = judged
    from rest_framework.authtoken.models import Token

    headers = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=staff).key}"}
    url = f"/api/projects/{project.slug}/runs/"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"learn_from": big.pk}, content_type="application/json", **headers)
    assert response.status_code == 201, response.content
    run = JudgeRun.objects.get(pk=response.json()["id"])
    assert run.backend == "local" and run.config["learn_from_run"] == big.pk
    shown = client.get(f"{url}{run.pk}/", **headers).json()
    assert shown["learned_from"] == f"6 SME labels and 74 verdicts of run {big.pk} ({big.judge_label})"
    refused = client.post(url, {"learn_from": run.pk}, content_type="application/json", **headers)
    assert refused.status_code == 400 and "local classifier's" in refused.json()["learn_from"][0]
    missing = client.post(url, {"learn_from": 999999}, content_type="application/json", **headers)
    assert missing.status_code == 400
