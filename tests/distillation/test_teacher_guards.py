"""Keys go only to the URL they were set for, and chat calls follow no redirect: teacher runs and judge runs
(F10, F17 of the hostile review); what the refusal detector leaves alone (F1); a start beside a running run (F8)."""

import json

import pytest

from annotations.models import Item
from distillation.models import TeacherRun, TeacherSettings
from tests.conftest import use_judge
from tests.distillation import test_break_teacher as breaking
from tests.distillation.test_break_teacher import ANSWER, run_against

pytestmark = pytest.mark.django_db
canned = breaking.canned  # the fixture: real HTTP servers answering as told

OLD_KEY, NEW_KEY, ENV_KEY = "sk-old-server-1111", "sk-new-server-2222", "sk-environment-3333"


def test_the_environments_key_goes_to_the_environments_url_only(project, judge_server, settings):
    from distillation.teacher import teacher_config_for

    settings.LARRY_TEACHER_BASE_URL, settings.LARRY_TEACHER_MODEL = "http://127.0.0.1:9/v1", "env-teacher"
    settings.LARRY_TEACHER_API_KEY = ENV_KEY
    assert teacher_config_for(project).api_key == ENV_KEY  # no settings: the environment's URL and key
    TeacherSettings.objects.create(project=project, model="mine")  # a blank URL: still the environment's
    assert teacher_config_for(project).api_key == ENV_KEY
    TeacherSettings.objects.filter(project=project).update(base_url=judge_server.base_url)
    config = teacher_config_for(project)
    assert (config.base_url, config.api_key) == (judge_server.base_url, "")  # its own URL: no key of another


def test_a_resumed_run_whose_teacher_moved_fails_and_sends_its_key_nowhere(
    project, judge_server, django_capture_on_commit_callbacks
):
    from distillation.teacher_runs import teacher_run_cancel, teacher_run_create, teacher_run_resume

    TeacherSettings.objects.create(project=project, base_url=judge_server.base_url, model="teacher", api_key=OLD_KEY)
    Item.objects.create(project=project, external_id="p1", prompt="Q?", response="")
    run = teacher_run_create(project=project, selection="missing")  # not started: its on_commit is dropped
    assert run.config["api_key_set"] is True and OLD_KEY not in json.dumps(run.config)
    teacher_run_cancel(run=run)
    TeacherSettings.objects.filter(project=project).update(base_url="http://127.0.0.1:9/v1/", api_key=NEW_KEY)
    with django_capture_on_commit_callbacks(execute=True):
        teacher_run_resume(run=run)
    run.refresh_from_db()
    assert run.status == "failed" and judge_server.authorizations == []
    assert judge_server.base_url in run.error and "http://127.0.0.1:9/v1/" in run.error and "new run" in run.error
    assert NEW_KEY not in run.error and OLD_KEY not in run.error


def test_a_run_goes_on_with_a_new_key_for_the_same_url(project, judge_server, django_capture_on_commit_callbacks):
    from distillation.teacher_runs import teacher_run_cancel, teacher_run_create, teacher_run_resume

    TeacherSettings.objects.create(project=project, base_url=judge_server.base_url, model="teacher", api_key=OLD_KEY)
    Item.objects.create(project=project, external_id="p1", prompt="Q?", response="")
    run = teacher_run_create(project=project, selection="missing")
    teacher_run_cancel(run=run)
    TeacherSettings.objects.filter(project=project).update(base_url=judge_server.base_url + "/", api_key=NEW_KEY)
    with django_capture_on_commit_callbacks(execute=True):
        teacher_run_resume(run=run)
    run.refresh_from_db()
    assert run.status == "finished" and run.answers_written == 1
    assert judge_server.authorizations == [f"Bearer {NEW_KEY}"]  # a rotated key, set for this very URL


def judge_run_moved(project, old_url: str, *, key: str, new_url: str, capture):
    """A judge run created at ``old_url`` (with ``key``, or the environment's judge without one when ``key`` is
    None), started only after the project's judge moved to ``new_url`` with another key."""
    from judging.services import judge_run_create
    from judging.tasks import start_judge_run

    Item.objects.create(project=project, external_id="j1", prompt="Q?", response="Plus costs $4.")
    if key is None:
        run = judge_run_create(project=project)  # the environment's judge (settings), no key
    else:
        run = judge_run_create(project=project, endpoint=use_judge(project, old_url, api_key=key))
    use_judge(project, new_url, api_key=NEW_KEY)
    with capture(execute=True):
        start_judge_run.delay(run.pk)
    run.refresh_from_db()
    return run


def test_a_judge_run_whose_endpoint_moved_fails_and_sends_its_key_nowhere(
    project, judge_server, django_capture_on_commit_callbacks
):
    run = judge_run_moved(
        project,
        judge_server.base_url,
        key=OLD_KEY,
        new_url="http://127.0.0.1:9/v1",
        capture=django_capture_on_commit_callbacks,
    )
    assert run.status == "failed" and "moved" in run.error and judge_server.authorizations == []


def test_a_judge_run_without_a_key_goes_on_at_its_url_without_the_new_one(
    project, judge_server, django_capture_on_commit_callbacks, settings
):
    settings.LARRY_JUDGE_BASE_URL, settings.LARRY_JUDGE_MODEL, settings.LARRY_JUDGE_API_KEY = (
        judge_server.base_url,
        "env-judge",
        "",
    )
    run = judge_run_moved(
        project, "", key=None, new_url="http://127.0.0.1:9/v1", capture=django_capture_on_commit_callbacks
    )
    assert run.status == "finished" and run.items_done == 1
    assert judge_server.authorizations and all(NEW_KEY not in header for header in judge_server.authorizations)


def test_a_judge_endpoint_that_redirects_judges_nothing_and_says_so(
    project,
    canned,
    start_run,
):
    from judging.models import Verdict

    verdict = {"verdict": "accept", "rationale": "fine", "confidence": 0.9}
    reply = {
        **ANSWER,
        "choices": [{**ANSWER["choices"][0], "message": {"role": "assistant", "content": json.dumps(verdict)}}],
    }
    elsewhere = canned(lambda path, headers, body: (200, {}, json.dumps(reply).encode()))
    judge = canned(lambda path, headers, body: (307, {"Location": elsewhere.base_url + "/chat/completions"}, b""))
    use_judge(project, judge.base_url, api_key=OLD_KEY)
    Item.objects.create(project=project, external_id="j1", prompt="Q?", response="Plus costs $4.")
    run = start_run(project)
    error = Verdict.objects.get(run=run).error
    assert not elsewhere.seen and run.items_done == 0
    assert error.startswith("redirect: HTTP 307") and elsewhere.base_url in error


def test_a_teacher_that_redirects_writes_nothing_and_says_so(
    project,
    canned,
    django_capture_on_commit_callbacks,
):
    elsewhere = canned(lambda path, headers, body: (200, {}, json.dumps(ANSWER).encode()))
    teacher = canned(lambda path, headers, body: (308, {"Location": elsewhere.base_url + "/chat/completions"}, b""))
    Item.objects.create(project=project, external_id="p1", prompt="Q?", response="")
    run = run_against(project, teacher.base_url, django_capture_on_commit_callbacks)
    answer = run.answers.get()
    assert not elsewhere.seen and answer.error_class == "client_error" and answer.error.startswith("redirect: HTTP 308")


@pytest.mark.parametrize(
    "content",
    [
        "I can't help but notice that 2 + 2 is 4.",
        "Sorry for the wait: the answer is 4.",
        "I cannot stress this enough: back up first.",
        "The assistant says: I'm sorry, but I can't help with that.",  # quoted further on, not the opening
        "I'm sorry, but I can't help with that. " + "Here is what you can do instead. " * 20,  # long: an answer
    ],
)
def test_answers_that_only_sound_like_a_refusal_are_kept(content):
    from tests.distillation.test_break_teacher import read

    result = read(content)
    assert result.response == content.strip() and not result.error_class


def test_a_finished_run_with_every_answer_stored_has_nothing_to_retry(client, project, lead):
    from django.urls import reverse

    run = TeacherRun.objects.create(
        project=project, model="teacher", base_url="http://t/v1", selection="missing", status="finished"
    )
    client.force_login(lead)
    url = reverse("teacher-run-detail", args=[project.slug, run.pk]) + "resume/"
    assert client.post(url + "?retry_failed=1").status_code == 409
    assert client.post(url).status_code == 409


def test_a_start_leaves_out_only_the_items_a_live_run_answers(project, settings):
    from distillation.teacher_runs import TeacherRunBusy, teacher_run_cancel, teacher_run_create

    settings.LARRY_TEACHER_BASE_URL, settings.LARRY_TEACHER_MODEL = "http://127.0.0.1:9/v1", "teacher"
    items = [Item.objects.create(project=project, external_id=f"p{i}", prompt=f"Q{i}?", response="") for i in range(3)]
    first = teacher_run_create(project=project, selection="items", item_ids=[items[0].pk, items[1].pk])
    second = teacher_run_create(project=project, selection="missing")  # queued runs are not started here
    assert (first.items_total, second.items_total) == (2, 1)
    assert list(second.work.values_list("item_id", flat=True)) == [items[2].pk]
    with pytest.raises(TeacherRunBusy, match=f"teacher run {first.pk}, {second.pk}"):
        teacher_run_create(project=project, selection="all")
    teacher_run_cancel(run=first)  # a cancelled run answers nothing: its items may be asked again
    assert teacher_run_create(project=project, selection="all").items_total == 2
