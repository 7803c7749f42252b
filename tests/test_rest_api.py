"""The REST API: per-user tokens, object-level permissions, cursor pagination, filters, training sets, schema.

The last test is a schemathesis run (its CLI, as a user would run it) against
the OpenAPI schema of a live server on PostgreSQL: no 5xx, and no response
that breaks the schema.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from rest_framework.authtoken.models import Token

from annotations.models import Item, Membership, Project, ProjectChange
from distillation.models import TrainingSet
from tests.distillation.test_training_sets import decide_items
from tests.services import require


def auth(user) -> dict:
    token, _ = Token.objects.get_or_create(user=user)
    return {"HTTP_AUTHORIZATION": f"Token {token.key}"}


@pytest.fixture
def decided(project, lead):
    return decide_items(project)


def test_every_endpoint_needs_authentication(client, project):
    for url in (
        "/api/projects/",
        f"/api/projects/{project.slug}/items/",
        f"/api/projects/{project.slug}/training-sets/",
    ):
        assert client.get(url).status_code == 401, url


def test_a_user_sees_only_their_projects(client, project, sme, outsider, staff):
    Project.objects.create(slug="other", name="Other")
    assert [p["slug"] for p in client.get("/api/projects/", **auth(sme)).json()["results"]] == ["support"]
    assert client.get("/api/projects/", **auth(outsider)).json()["results"] == []
    assert {p["slug"] for p in client.get("/api/projects/", **auth(staff)).json()["results"]} == {"support", "other"}
    assert client.get("/api/projects/other/", **auth(sme)).status_code == 404
    assert client.get("/api/projects/support/", **auth(sme)).json()["role"] == "sme"


@pytest.mark.parametrize("path", ["items/", "reviews/", "runs/", "label-functions/", "training-sets/"])
def test_project_content_is_for_leads_404_for_outsiders_403_for_smes(
    client, project, decided, lead, sme, outsider, path
):
    url = f"/api/projects/{project.slug}/{path}"
    assert client.get(url, **auth(outsider)).status_code == 404
    assert client.get(url, **auth(sme)).status_code == 403
    assert client.get(url, **auth(lead)).status_code == 200


def test_objects_of_another_project_are_not_reachable_through_yours(client, project, decided, lead):
    other = Project.objects.create(slug="other", name="Other")
    foreign = Item.objects.create(project=other, external_id="x", prompt="p", response="r")
    assert client.get(f"/api/projects/{project.slug}/items/{foreign.pk}/", **auth(lead)).status_code == 404
    assert client.get(f"/api/projects/other/items/{foreign.pk}/", **auth(lead)).status_code == 404


def test_items_page_with_a_cursor_and_filter(client, project, decided, lead):
    url = f"/api/projects/{project.slug}/items/"
    seen, page = [], client.get(url, {"page_size": 3}, **auth(lead)).json()
    while True:
        seen += [item["external_id"] for item in page["results"]]
        if not page["next"]:
            break
        page = client.get(page["next"], **auth(lead)).json()
    assert seen == [row[0] for row in Item.objects.filter(project=project).order_by("id").values_list("external_id")]
    accepted = client.get(url, {"gate_outcome": "accept", "source_model": "big"}, **auth(lead)).json()["results"]
    assert {item["external_id"] for item in accepted} == {"f1", "f2", "g1"}
    assert client.get(url, {"gate_outcome": "maybe"}, **auth(lead)).status_code == 400
    # PostgreSQL refuses offsets beyond +-15:59; found by schemathesis as a 500.
    assert client.get(url, {"created_before": "0232-03-23T00:42:31+18:15"}, **auth(lead)).status_code == 200
    assert client.get(url, {"created_after": "0001-01-01T00:00:00+18:00"}, **auth(lead)).status_code == 400


def test_the_external_id_filter_matches_exactly_and_imported_ids_are_stripped(client, project, lead):
    import io

    from annotations.importers import import_items

    import_items(project=project, stream=io.BytesIO(b'{"id": " a1 ", "prompt": "p", "response": "r"}\n'), fmt="jsonl")
    Item.objects.create(project=project, external_id=" spaced ", prompt="p", response="r")  # stored by other means
    url = f"/api/projects/{project.slug}/items/"

    def found(external_id: str) -> list[str]:
        return [
            item["external_id"]
            for item in client.get(url, {"external_id": external_id}, **auth(lead)).json()["results"]
        ]

    assert found("a1") == ["a1"] and found(" a1 ") == []
    assert found(" spaced ") == [" spaced "] and found("spaced") == []


def test_reviews_runs_and_verdicts(client, project, decided, lead):
    base = f"/api/projects/{project.slug}"
    rejects = client.get(f"{base}/reviews/", {"decision": "reject"}, **auth(lead)).json()["results"]
    assert {review["external_id"] for review in rejects} == {"a2", "c1"}
    runs = client.get(f"{base}/runs/", **auth(lead)).json()["results"]
    assert [run["id"] for run in runs] == [decided.pk]
    verdicts = client.get(f"{base}/runs/{decided.pk}/verdicts/", {"verdict": "reject"}, **auth(lead)).json()
    assert [v["external_id"] for v in verdicts["results"]] == ["h1"]
    assert client.get(f"{base}/runs/{decided.pk}/verdicts/", {"error": "true"}, **auth(lead)).json()["results"] == []


def test_leads_not_smes_start_a_run_over_the_api(
    client, project, decided, sme, lead, django_capture_on_commit_callbacks
):
    url = f"/api/projects/{project.slug}/runs/"
    assert client.post(url, **auth(sme)).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, **auth(lead))
    assert response.status_code == 201 and response.json()["backend"] == "local"
    change = ProjectChange.objects.get(project=project)
    assert (change.action, change.changed_by, change.detail["run"]) == ("run_start", lead, response.json()["id"])


def test_create_poll_and_download_a_training_set(client, project, decided, lead, django_capture_on_commit_callbacks):
    url = f"/api/projects/{project.slug}/training-sets/"
    with django_capture_on_commit_callbacks(execute=True):
        created = client.post(
            url, {"format": "dpo", "validation_fraction": 0.5, "seed": 1}, content_type="application/json", **auth(lead)
        )
    assert created.status_code == 201, created.json()
    detail = client.get(f"{url}{created.json()['id']}/", **auth(lead)).json()
    assert detail["status"] == "ready" and detail["lineage"]["seed"] == 1
    download = client.get(detail["download"], **auth(lead))
    assert download.status_code == 200 and download["Content-Type"].startswith("application/jsonl")
    body = b"".join(download.streaming_content)
    assert hashlib.sha256(body).hexdigest() == download["X-Larry-Sha256"] == detail["sha256"]
    assert len(body.splitlines()) == detail["rows_train"] + detail["rows_validation"] == 2
    report = client.get(f"{url}{detail['id']}/report/", **auth(lead)).json()
    assert len(report["unwritable"]) == detail["unwritable"] == 4
    train = client.get(detail["download"], {"split": "train"}, **auth(lead))
    assert train["X-Larry-Sha256"] == detail["files"]["train"]["sha256"]
    assert client.get(detail["download"], {"split": "test"}, **auth(lead)).status_code == 400


def test_bad_training_set_options_get_400_naming_the_field(client, project, decided, lead):
    url = f"/api/projects/{project.slug}/training-sets/"
    response = client.post(
        url, {"format": "xml", "filters": {"judge_run": 0}}, content_type="application/json", **auth(lead)
    )
    assert response.status_code == 400
    assert set(response.json()) == {"format", "filters"}
    assert client.post(url, [1, 2], content_type="application/json", **auth(lead)).status_code == 400
    assert not TrainingSet.objects.exists()


def test_a_set_still_building_answers_409(client, project, decided, lead):
    training_set = TrainingSet.objects.create(project=project)
    url = f"/api/projects/{project.slug}/training-sets/{training_set.pk}/download/"
    assert client.get(url, **auth(lead)).status_code == 409


def test_the_api_token_page_shows_and_replaces_the_users_token(client, sme):
    client.force_login(sme)
    page = client.get(reverse("annotations:api_token"))
    key = Token.objects.get(user=sme).key
    assert key in page.content.decode()
    client.post(reverse("annotations:api_token"))
    assert client.get(reverse("annotations:api_token")).status_code == 200
    assert Token.objects.get(user=sme).key != key


def test_a_token_is_issued_for_username_and_password(client, db):
    User.objects.create_user("ana", password="s3cret-pass")
    response = client.post("/api/token/", {"username": "ana", "password": "s3cret-pass"})
    assert response.json()["token"] == Token.objects.get(user__username="ana").key


def test_the_schema_and_the_interactive_docs_are_served(client, db):
    schema = client.get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200 and "/api/projects/{project_slug}/training-sets/" in schema.json()["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content
    assert b"cdn" not in docs.content.lower()  # served from our own static files, no internet needed


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(600)  # every operation fuzzed 15 times, twice: about 300 s on a busy 2-core machine
def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(live_server, tmp_path):
    require("postgres")
    lead = User.objects.create_user("lead")
    project = Project.objects.create(slug="support", name="Support")
    Membership.objects.create(project=project, user=lead, role=Membership.Role.LEAD)
    run = decide_items(project)
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.project_slug" = "{project.slug}"\n"path.run_id" = {run.pk}\n')

    def schemathesis(user, *only: str) -> None:
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(config),
            "run",
            f"{live_server.url}/api/schema/?format=json",
            "--header",
            f"Authorization: Token {Token.objects.create(user=user).key}",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            "15",
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-color",
            *only,
        ]
        result = subprocess.run(  # in tmp_path, where schemathesis keeps its cache
            command, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"}, cwd=tmp_path
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        assert "No issues found" in output or "passed" in output, output[-3000:]

    schemathesis(lead)  # every operation, as a project's lead
    # Creating projects is for staff only (a lead gets 403 whatever the body): fuzz the POSTs as a superuser too.
    schemathesis(User.objects.create_superuser("root"), "--include-method", "POST", "--include-path", "/api/projects/")


@pytest.mark.parametrize("position", ["abc", "%00", "1e5", "9" * 5000, "-1"])
def test_a_cursor_that_is_not_an_id_is_a_404_not_a_500(client, project, decided, lead, position):
    import base64

    cursor = base64.b64encode(f"p={position}".encode()).decode()
    for url in ("/api/projects/", f"/api/projects/{project.slug}/items/"):
        assert client.get(url, {"cursor": cursor}, **auth(lead)).status_code == 404, url


def test_malformed_slugs_and_tokens_are_refused_cleanly(client, project, sme):
    assert client.get("/api/projects/support%00/", **auth(sme)).status_code == 404
    assert client.get("/api/projects/", HTTP_AUTHORIZATION="Token \x00").status_code == 401
    assert client.get("/api/projects/", HTTP_AUTHORIZATION="Token " + "a" * 41).status_code == 401


def test_verdicts_of_another_projects_run_are_a_404(client, project, decided, lead):
    other = Project.objects.create(slug="other", name="Other")
    foreign = decide_items(other)
    url = f"/api/projects/{project.slug}/runs/{foreign.pk}/verdicts/"
    assert client.get(url, **auth(lead)).status_code == 404
    assert client.get(f"/api/projects/{project.slug}/runs/{decided.pk}/verdicts/", **auth(lead)).status_code == 200


def test_training_set_options_come_as_json_only(client, project, decided, lead):
    url = f"/api/projects/{project.slug}/training-sets/"
    assert client.post(url, {"format": "chat", "filters": "x"}, **auth(lead)).status_code == 415
    assert not TrainingSet.objects.exists()


def test_items_not_gated_yet_are_pending(client, project, decided, lead, staff):
    Item.objects.create(project=project, external_id="new", prompt="p", response="r")
    url = f"/api/projects/{project.slug}/items/"
    pending = client.get(url, {"gate_outcome": "pending"}, **auth(lead)).json()["results"]
    assert {item["external_id"] for item in pending} == {"e1", "new"}
    assert {item["gate_outcome"] for item in pending} == {"pending"}
    assert client.get("/api/projects/support/", **auth(staff)).json()["role"] == "staff"
    assert client.get("/api/projects/support/", **auth(lead)).json()["role"] == "lead"


def test_staff_create_projects_over_the_api_and_others_may_not(client, project, lead, staff):
    body = {"slug": "billing", "name": "Billing copilot", "reject_reasons": ["inaccurate", "curt"]}
    assert client.post("/api/projects/", body, content_type="application/json", **auth(lead)).status_code == 403
    assert not Project.objects.filter(slug="billing").exists()
    # Staff need the permission to add projects, as in the admin.
    assert client.post("/api/projects/", body, content_type="application/json", **auth(staff)).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="add_project"))
    staff = User.objects.get(pk=staff.pk)  # a fresh permission cache
    response = client.post("/api/projects/", body, content_type="application/json", **auth(staff))
    assert response.status_code == 201, response.content
    assert response.json()["role"] == "staff" and response.json()["reviews_per_item"] == 1
    assert Project.objects.get(slug="billing").reject_reasons == ["inaccurate", "curt"]
    for bad, field in [
        ({"slug": "billing", "name": "Again"}, "slug"),
        ({"slug": "no spaces", "name": "x"}, "slug"),
        ({"slug": "b2", "name": "x", "reject_reasons": ["a\x00b"]}, "reject_reasons"),
        ({"slug": "b3", "name": "x", "reject_reasons": []}, "reject_reasons"),
        ({"slug": "b6", "name": "x", "reject_reasons": ["curt", "curt"]}, "reject_reasons"),
        ({"slug": "b4", "name": "x", "reviews_per_item": 0}, "reviews_per_item"),
        ({"slug": "b5", "name": "x\x00"}, "name"),
    ]:
        answer = client.post("/api/projects/", bad, content_type="application/json", **auth(staff))
        assert answer.status_code == 400 and field in answer.json(), (bad, answer.content)
    assert Project.objects.count() == 2


# Every operation of the API that writes, and what it writes. History (review changes, label-function and
# rubric versions) and derived rows (verdicts, gate decisions, rule hits) are never written over the API.
API_WRITES = {
    ("post", "/api/projects/"),  # a new project (staff)
    ("post", "/api/projects/{slug}/import/"),  # new items and prior labels
    ("post", "/api/projects/{project_slug}/runs/"),  # a new judge run (staff)
    ("post", "/api/projects/{project_slug}/runs/{id}/queue-errors/"),  # items without a verdict into the SME queue
    ("post", "/api/projects/{project_slug}/training-sets/"),  # a new snapshot
    ("delete", "/api/projects/{project_slug}/training-sets/{id}/"),  # a snapshot (not history: built from it)
    ("post", "/api/token/"),  # the caller's own token
    ("post", "/api/projects/{slug}/gating-policy/"),  # a lead's choice of judges, logged
    ("post", "/api/projects/{slug}/samples/"),  # a recorded SME sample draw, its items into the SME queue
    ("post", "/api/projects/{slug}/certificate/"),  # a lead's target certified, logged
    ("post", "/api/projects/{project_slug}/teacher-runs/"),  # a new teacher run: its answers are new items
    ("post", "/api/projects/{project_slug}/teacher-runs/{id}/cancel/"),  # a run stopped
    ("post", "/api/projects/{project_slug}/teacher-runs/{id}/resume/"),  # a stopped run going on
}


def test_the_api_writes_no_history_and_no_derived_rows():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    writes = {
        (method, path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in ("post", "put", "patch", "delete")
    }
    assert writes == API_WRITES
    components = set(schema["components"]["schemas"])
    assert not components & {"ReviewChange", "LabelFunctionVersion", "RubricVersion", "GateDecision", "RuleHit"}


def test_reviews_verdicts_and_rules_refuse_writes_even_from_staff(client, project, decided, staff):
    from annotations.models import Review
    from judging.models import JudgeRun, LabelFunction, Verdict

    base = f"/api/projects/{project.slug}"
    run = JudgeRun.objects.get()
    for url in (
        f"{base}/reviews/{Review.objects.first().pk}/",
        f"{base}/runs/{run.pk}/",
        f"{base}/runs/{run.pk}/verdicts/{Verdict.objects.first().pk}/",
        f"{base}/label-functions/{LabelFunction.objects.first().pk}/",
    ):
        for method in (client.put, client.patch, client.delete):
            response = method(url, {"decision": "accept"}, content_type="application/json", **auth(staff))
            assert response.status_code == 405, (method, url)
    assert Review.objects.count() == 3 and Verdict.objects.count() == 6


def test_a_json_body_nested_too_deeply_is_a_400_on_every_json_endpoint(client, lead, project):
    from django.contrib.auth import get_user_model

    root = get_user_model().objects.create_superuser("root", password="root-pass-123")
    deep = "[" * 100_000
    for url, user in ((f"/api/projects/{project.slug}/training-sets/", lead), ("/api/projects/", root)):
        response = client.post(url, deep, content_type="application/json", **auth(user))
        assert response.status_code == 400 and "nested too deeply" in response.json()["detail"], url
