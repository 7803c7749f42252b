"""The teacher's endpoint is checked as the judge's is: a ``GET /models`` that follows no redirect (the key never
goes elsewhere), before a run starts (page, REST, run_teacher), on saving its settings in the admin, and on the
project page's "Check the teacher" button; and its requests/tokens-per-minute limits pace a run."""

import socket
import subprocess
import sys

import pytest
from django.urls import reverse

from distillation.models import TeacherRun
from distillation.teacher import TeacherUnreachable, teacher_config_for, teacher_connection_check
from tests.conftest import ROOT, make_items
from tests.distillation.test_teacher_runs import teach, use_teacher
from tests.judge_server import JudgeServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def closed_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_the_check_lists_the_models_and_names_the_teacher_url_and_fault(project, judge_server, closed_url):
    use_teacher(project, judge_server.base_url, model="sensei", api_key="sk-teacher-secret-1")
    judge_server.httpd.served_models = ["sensei", "other"]
    assert teacher_connection_check(teacher_config_for(project)) == ["sensei", "other"]
    judge_server.httpd.served_models = ["other"]
    with pytest.raises(TeacherUnreachable, match=r"The teacher at .* it does not serve the model 'sensei'"):
        teacher_connection_check(teacher_config_for(project))
    use_teacher(project, closed_url)
    with pytest.raises(TeacherUnreachable) as refused:
        teacher_connection_check(teacher_config_for(project))
    assert str(refused.value).startswith(f"The teacher at {closed_url} did not answer: connection refused")


def test_the_check_follows_no_redirect_so_the_key_stays_home(project, judge_server):
    thief = JudgeServer().start()
    try:
        judge_server.httpd.redirect_to = f"{thief.base_url}/models"
        use_teacher(project, judge_server.base_url, api_key="sk-teacher-secret-2")
        with pytest.raises(TeacherUnreachable, match="HTTP 302: it redirects to"):
            teacher_connection_check(teacher_config_for(project))
        assert thief.httpd.model_lists == 0 and "sk-teacher-secret-2" not in "".join(thief.authorizations)
    finally:
        thief.stop()


def test_an_unreachable_teacher_starts_no_run_from_the_page_rest_or_command(client, project, lead, closed_url):
    use_teacher(project, closed_url)
    make_items(project, ["x"])
    client.force_login(lead)
    response = client.post(
        reverse("teacher-run-list", args=[project.slug]), {"items": "all"}, content_type="application/json"
    )
    assert response.status_code == 502 and f"The teacher at {closed_url}" in response.json()["detail"]
    page = client.post(
        reverse("distillation:teacher_runs", args=[project.slug]), {"items": "all"}, HTTP_HX_REQUEST="true"
    )
    assert "connection refused" in page.content.decode()
    assert not TeacherRun.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_run_teacher_fails_at_once_naming_the_teacher(project, closed_url, worker_env):
    use_teacher(project, closed_url)
    make_items(project, ["x"])
    command = subprocess.run(
        [sys.executable, "manage.py", "run_teacher", project.slug, "--items", "all", "--timeout", "20"],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert command.returncode != 0 and f"The teacher at {closed_url} did not answer" in command.stderr
    assert "Traceback" not in command.stderr  # a clear error, not a stack
    assert not TeacherRun.objects.exists()


def test_the_check_button_reports_the_models_or_the_fault_to_leads_only(
    client, project, lead, sme, outsider, judge_server, closed_url
):
    url = reverse("distillation:teacher_check", args=[project.slug])
    use_teacher(project, judge_server.base_url)
    for user, code in ((outsider, 404), (sme, 403)):
        client.force_login(user)
        assert client.post(url).status_code == code
    assert judge_server.httpd.model_lists == 0
    client.force_login(lead)
    assert client.get(url).status_code == 405
    judge_server.httpd.served_models = ["test-teacher", "<b>odd</b>"]
    page = client.post(url, HTTP_HX_REQUEST="true").content.decode()
    assert f"The teacher at {judge_server.base_url} answers: it serves test-teacher, &lt;b&gt;odd&lt;/b&gt;." in page
    assert "Check the teacher" in page
    use_teacher(project, closed_url)
    page = client.post(url, HTTP_HX_REQUEST="true").content.decode()
    assert f"The teacher at {closed_url} did not answer: connection refused" in page
    assert client.post(url).status_code == 302  # without htmx: back to the project page


def test_the_admin_refuses_a_teacher_that_does_not_answer(project, closed_url, judge_server):
    from distillation.admin import TeacherSettingsForm

    data = {"project": project.pk, "base_url": closed_url, "model": "m", "temperature": 0.7, "max_tokens": 1024}
    data |= {"max_in_flight": 8, "price_in": 0, "price_out": 0, "requests_per_minute": 60}
    form = TeacherSettingsForm(data)
    assert not form.is_valid() and "connection refused" in str(form.errors["base_url"])
    form = TeacherSettingsForm({**data, "base_url": judge_server.base_url})
    assert form.is_valid(), form.errors
    assert form.save().requests_per_minute == 60 and judge_server.httpd.model_lists == 1
    bad = TeacherSettingsForm({**data, "base_url": judge_server.base_url, "tokens_per_minute": 10})
    assert not bad.is_valid() and "at least 1000" in str(bad.errors["tokens_per_minute"])


def test_a_requests_per_minute_limit_spaces_the_teachers_requests(
    project, judge_server, django_capture_on_commit_callbacks
):
    use_teacher(project, judge_server.base_url, max_in_flight=32, requests_per_minute=120)
    make_items(project, [f"r{i}" for i in range(4)])
    run = teach(project, "all", django_capture_on_commit_callbacks)
    assert run.answers_written == 4 and run.config["requests_per_minute"] == 120
    assert run.config["tokens_per_minute"] is None
    times = sorted(judge_server.request_times)
    # 120/min: one request every 0.5 s, so the k-th arrives at least k * 0.5 s after the first.
    assert all(times[k] - times[0] >= k * 0.5 - 0.05 for k in range(1, 4)), times
