"""A judge endpoint that does not answer is found out when its settings are saved or a run is started,
not by a run that "finishes" with every item a timeout: the test judge server, a closed port, a port that
accepts connections and never answers."""

import socket
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotations.models import Project
from judging.backends import JudgeConfig, JudgeUnreachable, judge_connection_check
from judging.models import JudgeEndpoint, JudgeRun
from tests.conftest import make_items, use_judge
from tests.judge_server import JudgeServer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def closed_url():
    return f"http://127.0.0.1:{_closed_port()}/v1"


@pytest.fixture
def silent_url():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    listener.close()


def test_the_check_passes_against_a_server_that_answers(judge_server):
    judge_connection_check(JudgeConfig(judge_server.base_url, "test-judge", ""))
    assert judge_server.httpd.model_lists == 1
    judge_connection_check(JudgeConfig("", "", ""))  # the local classifier: nothing to check
    assert judge_server.httpd.model_lists == 1


def test_the_check_names_the_url_and_the_fault(judge_server, closed_url, silent_url):
    with pytest.raises(JudgeUnreachable) as refused:
        judge_connection_check(JudgeConfig(closed_url, "m", ""))
    assert str(refused.value).startswith(f"The judge at {closed_url} did not answer: connection refused")
    started = time.monotonic()
    with pytest.raises(JudgeUnreachable) as silent:
        judge_connection_check(JudgeConfig(silent_url, "m", ""), timeout_s=0.5)
    assert f"The judge at {silent_url}" in str(silent.value) and "no answer within 0.5 s (timeout)" in str(silent.value)
    assert time.monotonic() - started < 5
    judge_server.httpd.models_status = 401
    secret = "sk-never-in-a-message-123"
    with pytest.raises(JudgeUnreachable) as unauthorised:
        judge_connection_check(JudgeConfig(judge_server.base_url, "m", secret))
    assert "HTTP 401: the server refused the API key" in str(unauthorised.value)
    assert secret not in str(unauthorised.value)
    judge_server.httpd.models_status, judge_server.httpd.down = 200, True
    with pytest.raises(JudgeUnreachable, match="HTTP 503: the server is failing"):
        judge_connection_check(JudgeConfig(judge_server.base_url, "m", ""))


def test_the_check_follows_no_redirect_and_names_a_model_the_server_does_not_serve(judge_server):
    thief = JudgeServer().start()
    try:
        judge_server.httpd.redirect_to = f"{thief.base_url}/models"
        with pytest.raises(JudgeUnreachable, match="HTTP 302: it redirects to"):
            judge_connection_check(JudgeConfig(judge_server.base_url, "m", "sk-secret"))
        assert thief.httpd.model_lists == 0 and "sk-secret" not in "".join(thief.authorizations)
    finally:
        thief.stop()
    judge_server.httpd.redirect_to, judge_server.httpd.served_models = "", ["llama-405b"]
    with pytest.raises(JudgeUnreachable, match="it does not serve the model 'llama-8b' \\(it serves: llama-405b\\)"):
        judge_connection_check(JudgeConfig(judge_server.base_url, "llama-8b", ""))
    judge_connection_check(JudgeConfig(judge_server.base_url, "llama-405b", ""))


@pytest.fixture
def root_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", password="root-pass-123"))
    return client


def _endpoint_form(project: Project, **fields) -> dict:
    return {
        "project": project.pk,
        "name": "big judge",
        "model": "m",
        "max_in_flight": 32,
        "price_in": "0",
        "price_out": "0",
        **fields,
    }


def test_saving_a_judge_endpoint_checks_it(root_client, project, judge_server, closed_url):
    url = reverse("admin:judging_judgeendpoint_add")
    response = root_client.post(url, _endpoint_form(project, base_url=closed_url))
    assert response.status_code == 200
    assert f"The judge at {closed_url} did not answer: connection refused" in response.content.decode()
    assert not JudgeEndpoint.objects.exists()  # not saved
    response = root_client.post(url, _endpoint_form(project, base_url=judge_server.base_url))
    assert response.status_code == 302
    assert JudgeEndpoint.objects.get().base_url == judge_server.base_url
    assert judge_server.httpd.model_lists == 1


@pytest.fixture
def unreachable_project(project, closed_url):
    use_judge(project, closed_url, "m")
    make_items(project, ["a", "b"])
    return project


def test_starting_a_run_on_the_page_checks_the_endpoint(client, staff, unreachable_project, closed_url):
    client.force_login(staff)
    response = client.post(reverse("judging:judge_run_start", args=[unreachable_project.slug]), follow=True)
    page = response.content.decode()
    assert "No run started. The judge at" in page and closed_url in page and "connection refused" in page
    assert not JudgeRun.objects.exists()


def test_starting_a_run_over_the_api_is_a_502_naming_the_endpoint(client, staff, unreachable_project, closed_url):
    client.force_login(staff)
    response = client.post(f"/api/projects/{unreachable_project.slug}/runs/")
    assert response.status_code == 502, response.content
    assert response.json()["detail"].startswith(f"The judge at {closed_url} did not answer: connection refused")
    assert not JudgeRun.objects.exists()


def test_run_judge_fails_at_once_naming_the_endpoint(unreachable_project, closed_url):
    with pytest.raises(CommandError, match=f"The judge at {closed_url} did not answer: connection refused"):
        call_command("run_judge", unreachable_project.slug, "--timeout", "5")
    assert not JudgeRun.objects.exists()
