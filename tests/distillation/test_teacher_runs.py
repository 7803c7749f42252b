"""Teacher runs (Sensei Larry) against the test server playing the teacher: answers stored as new candidate
responses, faults counted and never stored, reasoning kept apart; in-process and through a real worker."""

import subprocess
import sys
import time
from decimal import Decimal

import pytest

from annotations.models import Item
from distillation.models import TeacherAnswer, TeacherRun, TeacherSettings, TeacherWork
from distillation.teacher import NoTeacher, teacher_config_for
from distillation.teacher_runs import (
    failures_by_class,
    teacher_run_cancel,
    teacher_run_create,
)
from tests.conftest import ROOT, make_items

PROMPTS = {
    "plain": "How much is Plus?",
    "reasoning": "How much is Plus? [t-reasoning]",
    "think": "How much is Plus? [t-think]",
    "retried": "How much is Plus? [429-once]",
    "length": "How much is Plus? [t-length]",
    "refusal": "How much is Plus? [t-refusal]",
    "filter": "How much is Plus? [t-filter]",
    "empty": "How much is Plus? [t-empty]",
    "down": "How much is Plus? [http500]",
}


def use_teacher(project, base_url: str, **fields) -> TeacherSettings:
    settings_row, _ = TeacherSettings.objects.update_or_create(
        project=project, defaults={"base_url": base_url, "model": "test-teacher", **fields}
    )
    return settings_row


def teach(project, selection: str, capture, **options) -> TeacherRun:
    with capture(execute=True):
        run = teacher_run_create(project=project, selection=selection, **options)
    run.refresh_from_db()
    return run


@pytest.fixture
def few_retries(settings):
    settings.LARRY_JUDGE_MAX_RETRIES = 1  # one retry is enough to show it, and keeps a 5xx test short


def test_the_environment_is_the_default_teacher_and_project_settings_override_it(project, settings):
    settings.LARRY_TEACHER_BASE_URL, settings.LARRY_TEACHER_MODEL = "", ""
    with pytest.raises(NoTeacher):
        teacher_config_for(project)
    settings.LARRY_TEACHER_BASE_URL, settings.LARRY_TEACHER_MODEL = "http://teacher:8000/v1", "big"
    settings.LARRY_TEACHER_API_KEY = "env-key"
    config = teacher_config_for(project)
    assert (config.base_url, config.model, config.api_key, config.max_tokens) == (
        "http://teacher:8000/v1",
        "big",
        "env-key",
        1024,
    )
    TeacherSettings.objects.create(project=project, model="bigger", temperature=0.2, ask_reasoning=True)
    config = teacher_config_for(project)
    assert (config.base_url, config.model, config.api_key) == ("http://teacher:8000/v1", "bigger", "env-key")
    assert (config.temperature, config.ask_reasoning) == (0.2, True)
    assert "env-key" not in repr(config) and "api_key" not in config.snapshot()


def test_a_run_writes_answers_as_new_items_and_never_stores_faults(
    project, judge_server, django_capture_on_commit_callbacks, few_retries
):
    use_teacher(
        project, judge_server.base_url, price_in=Decimal("1"), price_out=Decimal("2"), system_prompt="Be exact."
    )
    for key, prompt in PROMPTS.items():
        Item.objects.create(project=project, external_id=key, prompt=prompt, context="Plus is $4.", response="?")
    run = teach(project, "all", django_capture_on_commit_callbacks)

    assert (run.status, run.items_total, run.answers_written, run.answers_failed) == ("finished", 9, 4, 5)
    answers = {a.item.external_id: a for a in TeacherAnswer.objects.select_related("item", "answer")}
    written = {key for key, a in answers.items() if a.answer is not None}
    assert written == {"plain", "reasoning", "think", "retried"}
    assert {key: a.error_class for key, a in answers.items() if a.answer is None} == {
        "length": "truncated",
        "refusal": "refusal",
        "filter": "refusal",
        "empty": "empty",
        "down": "server_error",
    }
    assert failures_by_class(run) == {
        "refusal": 2,
        "truncated reply": 1,
        "empty answer": 1,
        "server error (5xx)": 1,
    }
    # A 429 and a 500 were retried by the client, and the record shows every try.
    assert [a.get("status") for a in answers["retried"].attempts] == [429, 200]
    assert [a.get("status") for a in answers["down"].attempts] == [500, 500]
    # The answer is a new candidate response to the same prompt, by the teacher, with what it cost.
    plain = answers["plain"].answer
    original = Item.objects.get(external_id="plain")
    assert (plain.answers, plain.prompt, plain.context, plain.source_model) == (
        original,
        original.prompt,
        "Plus is $4.",
        "test-teacher",
    )
    assert plain.response.startswith("Answer ") and plain.reasoning == ""
    assert answers["plain"].tokens_out == 20 and answers["plain"].tokens_in > 0
    assert answers["plain"].cost == (answers["plain"].tokens_in * 1 + 20 * 2) / Decimal(1_000_000)
    assert run.cost == (run.tokens_in * 1 + run.tokens_out * 2) / Decimal(1_000_000) > 0
    # Reasoning is kept apart from the response, whichever way it came.
    for key in ("reasoning", "think"):
        answer = answers[key].answer
        assert answer.reasoning.startswith("Thought ") and "think" not in answer.response
    # The teacher saw the system prompt and the item's user turn as the chat formats write it, as free text.
    body = next(b for b in judge_server.requests if "How much is Plus?" == b["messages"][-1]["content"][-17:])
    assert body["messages"][0] == {"role": "system", "content": "Be exact."}
    assert body["messages"][1]["content"] == "Context:\nPlus is $4.\n\nHow much is Plus?"
    assert "response_format" not in body and body["model"] == "test-teacher"
    assert not TeacherWork.objects.exists()


def test_rejected_and_missing_choose_their_items_and_prompt_only_rows_are_never_answers(
    project, judge_server, django_capture_on_commit_callbacks
):
    from judging.models import GateDecision

    use_teacher(project, judge_server.base_url)
    good, bad = make_items(project, ["Plus costs $4.", "Plus costs $9."])
    bare = Item.objects.create(project=project, external_id="bare", prompt="What is Plus?", response="")
    GateDecision.objects.create(item=good, outcome="accept", basis="sme")
    GateDecision.objects.create(item=bad, outcome="reject", basis="sme")

    run = teach(project, "rejected", django_capture_on_commit_callbacks)
    assert list(run.answers.values_list("item", flat=True)) == [bad.pk]
    run = teach(project, "missing", django_capture_on_commit_callbacks)
    assert list(run.answers.values_list("item", flat=True)) == [bare.pk]
    assert bare.needs_response and not Item.objects.get(answers=bare).needs_response
    # Answered once, the bare prompt is no longer missing; answers are never themselves answered.
    run = teach(project, "missing", django_capture_on_commit_callbacks)
    assert run.items_total == 0 and run.status == "finished"
    run = teach(project, "all", django_capture_on_commit_callbacks)
    assert run.items_total == 3


def test_the_api_key_is_sent_and_stored_nowhere(project, judge_server, django_capture_on_commit_callbacks):
    use_teacher(project, judge_server.base_url, api_key="sk-teacher-secret-123")
    make_items(project, ["x"], prompt="Question [echo-auth]?")
    run = teach(project, "all", django_capture_on_commit_callbacks)
    answer = run.answers.get()
    assert judge_server.authorizations[-1] == "Bearer sk-teacher-secret-123"
    assert answer.error_class == "client_error" and "[redacted]" in answer.error
    assert "sk-teacher-secret-123" not in str(TeacherRun.objects.values().get()) + str(answer.attempts)


@pytest.fixture
def worker_env(worker_env):
    """The workers' heartbeat every second (a third of the lease), so a cancel is seen within a second."""
    return {**worker_env, "LARRY_JUDGE_LEASE_S": "3"}


def shell(env: dict, code: str) -> None:
    """Run ``code`` in ``manage.py shell`` with ``env`` (the worker's broker: what it enqueues goes to the worker,
    where this test process would run tasks in-process)."""
    imports = (
        "from annotations.models import Project; from distillation.models import TeacherRun; "
        "from distillation.teacher_runs import teacher_run_create, teacher_run_resume; "
    )
    subprocess.run([sys.executable, "manage.py", "shell", "-c", imports + code], cwd=ROOT, env=env, check=True)


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_it_with_cancel_and_resume(project, worker_env, worker):
    from tests.judge_server import JudgeServer

    server = JudgeServer(latency=0.5).start()
    try:
        use_teacher(project, server.base_url, max_in_flight=2)
        make_items(project, [f"r{i}" for i in range(30)], prompt="Question [t-reasoning]?")
        Item.objects.filter(external_id="r3").update(prompt="Question [t-length]?")
        shell(worker_env, f"teacher_run_create(project=Project.objects.get(pk={project.pk}), selection='all')")
        run = TeacherRun.objects.get()
        deadline = time.monotonic() + 60
        while TeacherAnswer.objects.filter(run=run).count() < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert teacher_run_cancel(run=run), TeacherRun.objects.values("status", "error").get()
        # The worker sees the cancel at its next heartbeat, stores what is in flight and releases the rest.
        stopped, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 2 and time.monotonic() < deadline:
            count = TeacherAnswer.objects.filter(run=run).count()
            if count != stopped:
                stopped, still_since = count, time.monotonic()
            time.sleep(0.1)
        assert 4 <= stopped < 30
        run.refresh_from_db()
        assert run.status == "cancelled"

        shell(worker_env, f"teacher_run_resume(run=TeacherRun.objects.get(pk={run.pk}))")
        deadline = time.monotonic() + 60
        while run.status != "finished" and time.monotonic() < deadline:
            time.sleep(0.2)
            run.refresh_from_db()
        assert run.status == "finished", worker.log()
        assert (run.items_total, run.answers_written, run.answers_failed) == (30, 29, 1)
        assert TeacherAnswer.objects.filter(run=run).count() == 30  # no item asked twice
        assert Item.objects.filter(answers__isnull=False, reasoning__startswith="Thought ").count() == 29
        assert len([b for b in server.requests if "response_format" not in b]) == 30
    finally:
        server.stop()
    assert "distillation.tasks.teacher_chunk" in worker.log()


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_run_teacher_waits_with_a_progress_line(project, judge_server, worker_env, worker):
    use_teacher(project, judge_server.base_url)
    make_items(project, ["a", "b", "c"], prompt="Question?")
    Item.objects.filter(external_id="r1").update(prompt="Question [t-refusal]?")
    command = subprocess.run(
        [sys.executable, "manage.py", "run_teacher", project.slug, "--items", "all", "--timeout", "60"],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert command.returncode == 0, command.stderr + worker.log()
    assert "teaching: " in command.stderr and "3/3 items" in command.stderr
    assert "2 answers written by test-teacher, 1 not stored (1 refusal)" in command.stdout


def test_a_run_whose_tasks_were_lost_is_revived(project, judge_server, django_capture_on_commit_callbacks, settings):
    from django.utils import timezone

    from distillation.teacher_runs import teacher_run_revive_if_stalled

    use_teacher(project, judge_server.base_url)
    make_items(project, ["a", "b"])
    with django_capture_on_commit_callbacks(execute=False):  # its start task is never sent (a lost message)
        run = teacher_run_create(project=project, selection="all")
    TeacherRun.objects.filter(pk=run.pk).update(status="running")
    assert not teacher_run_revive_if_stalled(run_id=run.pk)  # just started: give its tasks time
    long_ago = timezone.now() - timezone.timedelta(seconds=settings.LARRY_JUDGE_LEASE_S + 1)
    TeacherRun.objects.filter(pk=run.pk).update(created_at=long_ago)
    assert teacher_run_revive_if_stalled(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.answers_written) == ("finished", 2)
