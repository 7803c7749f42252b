"""A teacher run that asks for it has its answers judged when it is done: by the gating policy in force (a run
per deciding tier, extending the tier's run), never by a policy the run chose itself; without a policy nothing
is judged and the run says so. In-process, and end to end with a real Celery worker: teacher run, judge run
started by itself, the gate decides, accepted answers reach a training set and truncated ones never do."""

import subprocess
import sys

import pytest
from django.urls import reverse

from annotations.models import Item
from distillation.models import TeacherRun
from distillation.teacher_runs import teacher_run_create
from judging.models import GateDecision, JudgeRun
from judging.selectors import gating_policy, tier_runs
from judging.services import policy_runs_extend
from tests.conftest import ROOT, make_items, use_judge
from tests.distillation.test_teacher_runs import use_teacher
from tests.distillation.test_training_sets import build, download, jsonl

pytestmark = pytest.mark.django_db

PROMPTS = ["Q1?", "Q2 [t-bad]?", "Q3 [t-length]?", "Q4 [t-reasoning]?"]


def students(project) -> list[Item]:
    """Four prompts whose student responses the test judge rejects (they say WRONG)."""
    return [
        Item.objects.create(project=project, external_id=f"s{i}", prompt=prompt, response=f"Student {i}: WRONG")
        for i, prompt in enumerate(PROMPTS)
    ]


def test_the_policy_judges_the_answers_and_the_gate_decides_them(
    project, lead, judge_server, start_run, django_capture_on_commit_callbacks
):
    use_judge(project, judge_server.base_url, model="judge-70b")
    use_teacher(project, judge_server.base_url, model="teacher-405b")
    students(project)
    tier_run = start_run(project, use=True)
    policy_before = gating_policy(project).snapshot()
    with django_capture_on_commit_callbacks(execute=True):
        run = teacher_run_create(project=project, selection="rejected", user=lead, judge=True)
    run.refresh_from_db()
    assert (run.status, run.answers_written, run.answers_failed, run.judge_note) == ("finished", 3, 1, "")
    (extension,) = run.judge_runs.all()
    answers = Item.objects.filter(answers__isnull=False)
    # Exactly the new answers, by the tier's judge with its recorded prompt, started by the teacher run's creator.
    assert extension.config["item_ids"] == sorted(answers.values_list("id", flat=True))
    assert (extension.status, extension.items_total, extension.created_by) == ("finished", 3, lead)
    assert (extension.model, extension.config["extends"]) == ("judge-70b", tier_run.pk)
    assert extension.config["system_prompt"] == tier_run.config["system_prompt"]
    assert tier_runs(gating_policy(project).tiers.get()) == [tier_run.pk, extension.pk]
    assert gating_policy(project).snapshot() == policy_before  # the policy a lead chose is unchanged
    # Asked again (a resumed run finishing once more), nothing the tier has judged is judged twice.
    assert policy_runs_extend(project=project, item_ids=list(answers.values_list("id", flat=True))) == []
    outcomes = dict(GateDecision.objects.filter(item__in=answers).values_list("item__answers__prompt", "outcome"))
    assert outcomes == {"Q1?": "accept", "Q2 [t-bad]?": "reject", "Q4 [t-reasoning]?": "accept"}
    client_page = reverse("distillation:teacher_runs", args=[project.slug])
    from django.test import Client

    client = Client()
    client.force_login(lead)
    page = client.get(client_page).content.decode()
    assert f'judged by <a href="{extension.get_absolute_url()}">run {extension.pk}</a> (finished)' in page
    assert 'name="judge"' in page and "checked" in page.split('name="judge"')[1].split(">")[0]
    assert 'data-testid="self-judged"' not in page


def test_without_a_policy_nothing_is_judged_and_the_run_says_so(
    project, judge_server, django_capture_on_commit_callbacks
):
    use_judge(project, judge_server.base_url)
    use_teacher(project, judge_server.base_url)
    make_items(project, ["x"], prompt="Q?")
    with django_capture_on_commit_callbacks(execute=True):
        run = teacher_run_create(project=project, selection="all", judge=True)
    run.refresh_from_db()
    assert run.answers_written == 1 and not run.judge_runs.exists()
    assert "has no gating policy" in run.judge_note and "nothing was judged" in run.judge_note
    assert not JudgeRun.objects.exists()
    assert GateDecision.objects.get(item__answers__isnull=False).outcome == "pending"


def test_without_judge_the_answers_wait_for_a_judge_run(
    project, judge_server, start_run, django_capture_on_commit_callbacks
):
    use_judge(project, judge_server.base_url, model="judge-70b")
    use_teacher(project, judge_server.base_url)
    students(project)
    start_run(project, use=True)
    with django_capture_on_commit_callbacks(execute=True):
        run = teacher_run_create(project=project, selection="rejected")
    assert not run.judge_answers and JudgeRun.objects.count() == 1
    assert set(GateDecision.objects.filter(item__answers__isnull=False).values_list("outcome", flat=True)) == {
        "pending"
    }


def test_the_page_says_when_the_teacher_judges_itself_only_for_the_same_url_and_model(
    client, project, lead, judge_server, start_run
):
    from tests.judge_server import JudgeServer

    use_judge(project, judge_server.base_url, model="same-model")
    make_items(project, ["fine"])
    start_run(project, use=True)
    other = JudgeServer().start()
    try:
        use_teacher(project, other.base_url, model="same-model")  # same model name, another server
        client.force_login(lead)
        page = client.get(reverse("distillation:teacher_runs", args=[project.slug])).content.decode()
        assert 'data-testid="self-judged"' not in page
        use_teacher(project, judge_server.base_url + "/", model="same-model")
        page = client.get(reverse("distillation:teacher_runs", args=[project.slug])).content.decode()
        assert 'data-testid="self-judged"' in page and "The gating policy's judge is the teacher itself" in page
    finally:
        other.stop()


def test_the_rest_api_takes_judge_in_the_body(client, project, lead, judge_server, django_capture_on_commit_callbacks):
    use_teacher(project, judge_server.base_url)
    make_items(project, ["x"])
    client.force_login(lead)
    url = reverse("teacher-run-list", args=[project.slug])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"items": "all", "judge": True}, content_type="application/json")
    assert response.status_code == 201, response.content
    body = client.get(f"{url}{response.json()['id']}/").json()
    assert body["judge_answers"] is True and body["judge_runs"] == [] and "no gating policy" in body["judge_note"]
    bad = client.post(url, {"items": "all", "judge": "perhaps"}, content_type="application/json")
    assert bad.status_code == 400 and "judge" in bad.json()


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_end_to_end_with_a_real_worker(project, judge_server, start_run, worker_env, worker):
    """run_teacher (judging by default) with a real worker: the teacher answers, a judge run of the policy starts by
    itself, the gate decides, the accepted answers are SFT rows of a training set, the truncated one never."""
    use_judge(project, judge_server.base_url, model="judge-70b")
    use_teacher(project, judge_server.base_url, model="teacher-405b")
    students(project)
    start_run(project, use=True)  # in this process: the policy a lead chose before
    command = subprocess.run(
        [sys.executable, "manage.py", "run_teacher", project.slug, "--items", "rejected", "--timeout", "90"],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert command.returncode == 0, command.stderr + worker.log()
    assert "3 answers written by teacher-405b, 1 not stored (1 truncated reply)" in command.stdout
    run = TeacherRun.objects.get()
    (extension,) = run.judge_runs.all()
    assert f"judged by run(s) {extension.pk}: 2 accepted, 1 rejected (0 vetoed by rules), 0 pending" in command.stdout
    assert extension.status == "finished" and extension.items_total == 3
    accepted = Item.objects.filter(answers__isnull=False, gate_decision__outcome="accept")
    assert sorted(a.answers.prompt for a in accepted) == ["Q1?", "Q4 [t-reasoning]?"]
    from django.test import TestCase

    def capture(execute):
        return TestCase.captureOnCommitCallbacks(execute=execute)

    chat = jsonl(download(build(project, capture, format="chat")))
    assert {(r["messages"][0]["content"], r["messages"][1]["content"]) for r in chat} == {
        (a.prompt, a.response) for a in accepted
    }
    assert "Q3 [t-length]?" not in str(chat) and "WRONG" not in str(chat)
    assert "distillation.tasks.teacher_chunk" in worker.log()
