"""The judge's API key is write-only: typed in the admin, sent to the judge, and echoed nowhere else.

Not in any page (admin or app), API response or schema, run snapshot, training-set lineage, stored
error, log line or demo report; whether it comes from the project's judge endpoint or from ``LARRY_JUDGE_API_KEY``.
"""

import json
import logging

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.views.debug import SafeExceptionReporterFilter
from rest_framework.authtoken.models import Token

from annotations.models import Project
from judging.backends import JudgeConfig
from judging.models import JudgeEndpoint, JudgeRun, Verdict
from tests.conftest import make_items, use_judge

SECRET = "sk-larry-9f8e7d6c5b4a3f2e1d0c"


@pytest.fixture
def root(db):
    return get_user_model().objects.create_superuser("root", password="root-pass-123")


@pytest.fixture
def admin_client(client, root):
    client.force_login(root)
    return client


@pytest.fixture
def keyed_project(project, judge_server):
    use_judge(project, judge_server.base_url, api_key=SECRET)
    return project


def endpoint_form(endpoint: JudgeEndpoint, **fields) -> dict:
    return {
        "project": endpoint.project_id,
        "name": endpoint.name,
        "base_url": endpoint.base_url,
        "model": endpoint.model,
        "max_in_flight": endpoint.max_in_flight,
        "price_in": "0",
        "price_out": "0",
        "is_default": "on" if endpoint.is_default else "",
        **fields,
    }


def post_endpoint(admin_client, project: Project, **fields):
    endpoint = project.judge_endpoints.get()
    return admin_client.post(
        reverse("admin:judging_judgeendpoint_change", args=[endpoint.pk]), endpoint_form(endpoint, **fields)
    )


def endpoint_page(admin_client, project: Project) -> str:
    endpoint = project.judge_endpoints.get()
    return admin_client.get(reverse("admin:judging_judgeendpoint_change", args=[endpoint.pk])).content.decode()


def stored_key(project: Project) -> str:
    return JudgeEndpoint.objects.values_list("api_key", flat=True).get(project=project)


def test_the_admin_never_shows_the_key_and_a_blank_field_keeps_it(admin_client, keyed_project):
    page = endpoint_page(admin_client, keyed_project)
    assert SECRET not in page
    assert 'type="password"' in page and "A key is stored" in page
    response = post_endpoint(admin_client, keyed_project, model="other-judge")
    assert response.status_code == 302, response.content.decode()[:3000]
    assert stored_key(keyed_project) == SECRET
    endpoint = keyed_project.judge_endpoints.get()
    assert endpoint.model == "other-judge"
    history = admin_client.get(reverse("admin:judging_judgeendpoint_history", args=[endpoint.pk]))
    assert "API key" not in history.content.decode()  # not typed, so not changed


def test_a_new_key_replaces_the_stored_one_and_clearing_removes_it(admin_client, keyed_project):
    assert post_endpoint(admin_client, keyed_project, api_key_new=" sk-new-key ").status_code == 302
    assert stored_key(keyed_project) == "sk-new-key"
    assert post_endpoint(admin_client, keyed_project, api_key_clear="on").status_code == 302
    assert stored_key(keyed_project) == ""
    assert "No key is stored" in endpoint_page(admin_client, keyed_project)


def test_an_endpoint_added_in_the_admin_keeps_its_key_unseen(admin_client, project, judge_server):
    # The admin checks that a new endpoint answers before saving it: the test judge server does.
    new = JudgeEndpoint(project=project, name="big judge", base_url=judge_server.base_url, model="big", is_default=True)
    response = admin_client.post(reverse("admin:judging_judgeendpoint_add"), endpoint_form(new, api_key_new=SECRET))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert stored_key(project) == SECRET
    page = endpoint_page(admin_client, project)
    assert SECRET not in page and page.index('name="model"') < page.index('name="api_key_new"')


def test_a_second_default_judge_for_a_project_is_refused(admin_client, keyed_project):
    other = JudgeEndpoint(project=keyed_project, name="other", base_url="http://o:8000/v1", model="o", is_default=True)
    response = admin_client.post(reverse("admin:judging_judgeendpoint_add"), endpoint_form(other))
    assert response.status_code == 200 and "already has a default judge" in response.content.decode()
    assert keyed_project.judge_endpoints.count() == 1


def test_typing_a_key_and_clearing_it_at_once_is_refused(admin_client, keyed_project):
    response = post_endpoint(admin_client, keyed_project, api_key_new="sk-other", api_key_clear="on")
    assert response.status_code == 200 and "Either type a new key or clear the stored one" in response.content.decode()
    assert stored_key(keyed_project) == SECRET


def test_the_key_would_be_masked_in_an_error_report_of_the_admin_form(admin_client, keyed_project):
    """Django's error reports (mails to ADMINS, the debug page) list POST data unless marked sensitive."""
    response = post_endpoint(admin_client, keyed_project, api_key_new="sk-typed-in-the-form")
    posted = SafeExceptionReporterFilter().get_post_parameters(response.wsgi_request)
    assert posted["api_key_new"] != "sk-typed-in-the-form"


def test_a_base_url_carrying_credentials_is_refused(admin_client, keyed_project):
    """The base URL is shown on every run page and in every export's judge name."""
    response = post_endpoint(admin_client, keyed_project, base_url="https://judge:sk-in-the-url@llm.example/v1")
    assert response.status_code == 200 and "put the key in the API key field" in response.content.decode()
    assert "sk-in-the-url" not in JudgeEndpoint.objects.get().base_url


def test_the_config_never_prints_its_key():
    config = JudgeConfig("http://judge/v1", "m", SECRET)
    assert SECRET not in repr(config) and SECRET not in str(config)


def pages_and_api(client, project: Project, run: JudgeRun, training_set, user) -> dict[str, str]:
    """Every page and API answer that shows the project, its runs or its training sets."""
    client.force_login(user)
    token = {"HTTP_AUTHORIZATION": f"Token {Token.objects.get_or_create(user=user)[0].key}"}
    api = f"/api/projects/{project.slug}"
    urls = {
        "admin project": reverse("admin:annotations_project_change", args=[project.pk]),
        "admin projects": reverse("admin:annotations_project_changelist"),
        "admin project history": reverse("admin:annotations_project_history", args=[project.pk]),
        "admin run": reverse("admin:judging_judgerun_change", args=[run.pk]),
        "admin runs": reverse("admin:judging_judgerun_changelist"),
        "admin verdicts": reverse("admin:judging_verdict_changelist"),
        "admin verdict": reverse("admin:judging_verdict_change", args=[Verdict.objects.filter(run=run).first().pk]),
        "project page": reverse("judging:project_detail", args=[project.slug]),
        "run page": reverse("judging:run_detail", args=[project.slug, run.pk]),
        "compare page": reverse("judging:runs_compare", args=[project.slug]) + f"?a={run.pk}&b={run.pk}",
        "training sets page": reverse("distillation:training_sets", args=[project.slug]),
        "training set page": reverse("distillation:training_set_detail", args=[project.slug, training_set.pk]),
        "api projects": "/api/projects/",
        "api project": f"/api/projects/{project.slug}/",
        "api runs": f"{api}/runs/",
        "api run": f"{api}/runs/{run.pk}/",
        "api verdicts": f"{api}/runs/{run.pk}/verdicts/",
        "api training set": f"{api}/training-sets/{training_set.pk}/",
        "api schema": "/api/schema/",
        "api schema json": "/api/schema/?format=json",
        "api docs": "/api/docs/",
    }
    for endpoint in project.judge_endpoints.all():
        urls["admin endpoint"] = reverse("admin:judging_judgeendpoint_change", args=[endpoint.pk])
        urls["admin endpoints"] = reverse("admin:judging_judgeendpoint_changelist")
    answers = {}
    for name, url in urls.items():
        response = client.get(url, **(token if url.startswith("/api/") else {}))
        assert response.status_code == 200, (name, response.status_code)
        answers[name] = response.content.decode()
    return answers


def run_and_snapshot(project, start_run, django_capture_on_commit_callbacks, user):
    from tests.distillation.test_training_sets import build

    make_items(project, ["Plus costs $4.", "Plus costs $400. WRONG", "Who am I talking to? [echo-auth]"])
    run = start_run(project, user=user)
    assert run.status == "finished" and run.items_done == 2
    return run, build(project, django_capture_on_commit_callbacks)


def test_the_key_is_sent_to_the_judge_and_echoed_nowhere(
    client, root, keyed_project, judge_server, start_run, django_capture_on_commit_callbacks, caplog
):
    caplog.set_level(logging.DEBUG)
    run, training_set = run_and_snapshot(keyed_project, start_run, django_capture_on_commit_callbacks, root)
    assert f"Bearer {SECRET}" in judge_server.authorizations  # the judge got it
    error = Verdict.objects.get(item__response__contains="[echo-auth]").error
    assert "invalid credentials" in error and SECRET not in error  # the server's echo is kept, without the key
    assert SECRET not in json.dumps(run.config) and SECRET not in json.dumps(training_set.lineage)
    for name, body in pages_and_api(client, keyed_project, run, training_set, root).items():
        assert SECRET not in body, name
    assert caplog.records and SECRET not in caplog.text


def test_the_environments_key_is_echoed_nowhere(
    client, root, project, judge_server, start_run, django_capture_on_commit_callbacks, settings
):
    settings.LARRY_JUDGE_BASE_URL, settings.LARRY_JUDGE_MODEL = judge_server.base_url, "env-judge"
    settings.LARRY_JUDGE_API_KEY = SECRET
    run, training_set = run_and_snapshot(project, start_run, django_capture_on_commit_callbacks, root)
    assert f"Bearer {SECRET}" in judge_server.authorizations
    assert SECRET not in Verdict.objects.get(item__response__contains="[echo-auth]").error
    for name, body in pages_and_api(client, project, run, training_set, root).items():
        assert SECRET not in body, name


def test_the_demo_report_never_holds_the_environments_key(transactional_db, tmp_path, judge_server, settings):
    from distillation.pipeline import run_main_job
    from tests.test_main_job import EXAMPLE

    settings.LARRY_JUDGE_BASE_URL, settings.LARRY_JUDGE_MODEL = judge_server.base_url, "env-judge"
    settings.LARRY_JUDGE_API_KEY = SECRET
    printed: list[str] = []
    report = run_main_job(data=EXAMPLE, out=tmp_path, fraction=0.5, progress=printed.append)
    assert report["judge"]["backend"] == "openai" and f"Bearer {SECRET}" in judge_server.authorizations
    assert SECRET not in (tmp_path / "report.json").read_text() and SECRET not in "\n".join(printed)
