"""REST import and export (token auth, permissions, streaming) and the project page."""

import io
import json

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token

from annotations.models import ProjectChange, Review
from judging.models import GateDecision, JudgeRun, LabelFunction
from judging.services import gate_apply, label_functions_apply
from tests.conftest import make_items, use_run


@pytest.fixture
def decided(project):
    """Three items: SME-accepted, SME-rejected, SME-accepted but vetoed by a rule; one undecided."""
    items = make_items(project, ["Plus is $4 a month.", "Plus is free.", "Switch to Dropbox.", "Unjudged."])
    for item, decision in zip(items[:3], ["accept", "reject", "accept"], strict=True):
        Review.objects.create(item=item, decision=decision, origin="import")
    items[0].context = "Plus: $4/month."
    items[0].save()
    LabelFunction.objects.create(
        project=project, name="competitor", kind="keywords", params={"keywords": ["Dropbox"]}, reason="competitor"
    )
    label_functions_apply(project=project)
    gate_apply(project=project)
    return items


def token_header(user):
    return {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=user).key}"}


def export_url(project):
    return reverse("distillation:api_export_chat", args=[project.slug])


def test_export_needs_a_token(client, project):
    assert client.get(export_url(project)).status_code == 401


def test_export_streams_the_accepted_set_as_chat_jsonl(client, lead, project, decided):
    response = client.get(export_url(project), **token_header(lead))
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("application/jsonl")
    assert response["X-Larry-Judge"] == "none (SME ground truth only)"
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "messages": [
                {"role": "user", "content": "Context:\nPlus: $4/month.\n\nQuestion 0?"},
                {"role": "assistant", "content": "Plus is $4 a month."},
            ]
        }
    ]


def test_export_names_the_gating_policy_not_the_latest_run(client, lead, project, decided):
    chosen = JudgeRun.objects.create(
        project=project, backend="openai", model="llama-405b", base_url="http://vllm/v1", status="finished"
    )
    JudgeRun.objects.create(project=project, backend="openai", model="newer", base_url="http://x/v1", status="finished")
    auth = token_header(lead)
    assert client.get(export_url(project), **auth)["X-Larry-Judge"] == "none (SME ground truth only)"
    use_run(chosen, user=lead)
    response = client.get(export_url(project), **auth)
    assert response["X-Larry-Judge"] == f"tier 1: run {chosen.pk} (llama-405b at http://vllm/v1), by its verdict alone"
    # A model name with line breaks (staff set it) cannot split the header: one line, the export still answers.
    JudgeRun.objects.filter(pk=chosen.pk).update(model="gpt\r\nSet-Cookie: pwn=1\u2028x")
    response = client.get(export_url(project), **auth)
    assert response.status_code == 200 and "Set-Cookie" not in response.headers.get("Set-Cookie", "")
    assert response["X-Larry-Judge"].startswith(f"tier 1: run {chosen.pk} (gpt Set-Cookie: pwn=1 x at")


def test_an_outsider_token_gets_404_and_an_sme_403(client, outsider, sme, project, decided):
    assert client.get(export_url(project), **token_header(outsider)).status_code == 404
    assert client.get(export_url(project), **token_header(sme)).status_code == 403


@pytest.mark.parametrize("page", ["project_detail", "rules"])
def test_smes_review_blind_the_judges_and_rules_pages_are_for_leads(client, sme, lead, project, page):
    url = reverse(f"judging:{page}", args=[project.slug])
    client.force_login(sme)
    assert client.get(url).status_code == 403
    client.force_login(lead)
    assert client.get(url).status_code == 200


def test_import_over_rest_reports_bad_lines(client, lead, project):
    data = b'{"id": "1", "prompt": "p", "response": "r", "human_label": "accept"}\n{"id": "2"}\n\n'
    upload = io.BytesIO(data)
    upload.name = "items.jsonl"
    url = reverse("annotations:api_import", args=[project.slug])
    response = client.post(url, {"file": upload}, **token_header(lead))
    assert response.status_code == 200, response.content
    assert response.json() == {
        "created": 1,
        "existing": 0,
        "labels": 1,
        "blank": 1,
        "fatal": "",
        "errors": [{"line": 2, "reason": "prompt is missing or empty"}],
        "regating": True,
    }


def test_an_import_re_gates_the_project_so_prior_labels_and_rules_count(
    client, lead, project, django_capture_on_commit_callbacks
):
    LabelFunction.objects.create(
        project=project, name="competitor", kind="keywords", params={"keywords": ["Dropbox"]}, reason="competitor"
    )
    rows = [
        {"id": "a", "prompt": "Price?", "response": "Plus is $4 a month.", "human_label": "accept"},
        {"id": "r", "prompt": "Price?", "response": "Plus is free.", "human_label": "reject"},
        {"id": "v", "prompt": "Sync?", "response": "Switch to Dropbox.", "human_label": "accept"},
        {"id": "u", "prompt": "Sync?", "response": "Use the desktop app."},
    ]
    upload = io.BytesIO(b"".join(json.dumps(row).encode() + b"\n" for row in rows))
    upload.name = "items.jsonl"
    url, auth = reverse("annotations:api_import", args=[project.slug]), token_header(lead)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:  # the re-gating task runs in-process
        response = client.post(url, {"file": upload}, **auth)
    assert response.status_code == 200 and callbacks
    outcomes = dict(GateDecision.objects.values_list("item__external_id", "outcome"))
    assert outcomes == {"a": "accept", "r": "reject", "v": "reject", "u": "pending"}
    assert GateDecision.objects.get(item__external_id="v").reasons == ["competitor"]
    items = client.get(f"/api/projects/{project.slug}/items/", **auth).json()["results"]
    gate = {i["external_id"]: (i["gate_outcome"], i["gate_basis"], i["gate_reasons"]) for i in items}
    assert gate["v"] == ("reject", "sme", ["competitor"]) and gate["u"] == ("pending", "none", [])
    # Importing the same file again creates nothing, so nothing is re-gated.
    upload.seek(0)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = client.post(url, {"file": upload}, **auth).json()
    assert again["existing"] == 4 and again["regating"] is False
    assert callbacks == []


def test_an_import_that_fails_midway_still_re_gates_what_it_stored(
    client, lead, project, monkeypatch, django_capture_on_commit_callbacks
):
    from annotations import api
    from annotations.models import Item

    def stores_then_fails(*, project, **options):
        item = Item.objects.create(project=project, external_id="stored", prompt="p", response="r")
        Review.objects.create(item=item, decision="accept", origin="import")
        raise RuntimeError("the connection dropped")

    monkeypatch.setattr(api, "import_items", stores_then_fails)
    upload = io.BytesIO(b'{"id": "x", "prompt": "p", "response": "r"}\n')
    upload.name = "items.jsonl"
    url, auth = reverse("annotations:api_import", args=[project.slug]), token_header(lead)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError, match="dropped"):
        client.post(url, {"file": upload}, **auth)
    assert GateDecision.objects.get(item__external_id="stored").outcome == "accept"


def test_import_over_rest_refuses_an_unknown_format_smes_and_outsiders(client, lead, sme, outsider, project):
    url = reverse("annotations:api_import", args=[project.slug])
    upload = io.BytesIO(b"x")
    upload.name = "items.xlsx"
    assert client.post(url, {"file": upload}, **token_header(lead)).status_code == 400
    upload.seek(0)
    upload.name = "items.jsonl"
    assert client.post(url, {"file": upload}, **token_header(outsider)).status_code == 404
    upload.seek(0)
    assert client.post(url, {"file": upload}, **token_header(sme)).status_code == 403  # SMEs review blind
    assert client.post(url, {"file": upload}).status_code == 401


def test_the_project_page_shows_the_funnel(client, lead, project, decided):
    client.force_login(lead)
    page = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    items = reverse("judging:items", args=[project.slug])
    for text in (
        f'<a class="n" href="{items}">4</a> imported',  # the numbers with a filter open the items list
        "3</span> SME reviewed",
        "2</span> accepted by SME or judge",
        "1</span> accepts vetoed by rules",
        f'<a class="n" href="{items}?outcome=accept">1</a> accepted',
        f'pending: <a href="{items}?outcome=pending">1</a>',
    ):
        assert text in page, text


def test_leads_not_smes_start_judge_runs(client, sme, lead, project, decided, django_capture_on_commit_callbacks):
    url = reverse("judging:judge_run_start", args=[project.slug])
    client.force_login(sme)
    assert client.post(url).status_code == 403
    client.force_login(lead)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(url).status_code == 302
    run = JudgeRun.objects.get()
    assert run.created_by == lead
    change = ProjectChange.objects.get(project=project)
    assert (change.action, change.changed_by, change.detail["run"]) == ("run_start", lead, run.pk)
    # Two accepted and one rejected SME label are too few to train on: the failure is shown, not hidden.
    assert run.status == "failed"
    page = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    assert "local classifier tfidf-logreg (not an LLM)" in page
    assert "needs at least 2 accepted and 2 rejected SME reviews" in page


def test_a_lead_regates_after_new_reviews_queued_not_inline(
    client, sme, lead, project, decided, django_capture_on_commit_callbacks
):
    url = reverse("judging:regate", args=[project.slug])
    client.force_login(sme)
    assert client.post(url).status_code == 403
    Review.objects.create(item=decided[3], decision="accept", origin="import")
    client.force_login(lead)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post(url, follow=True)
    assert response.status_code == 200 and "Re-gating queued" in response.content.decode()
    assert GateDecision.objects.get(item=decided[3]).outcome == "pending"  # nothing re-gated inside the request
    assert len(queued) == 1
    queued[0]()  # the worker's turn
    assert GateDecision.objects.get(item=decided[3]).outcome == "accept"
    page = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    assert "1 requested, 1 done" in page


def test_an_sme_corrected_response_wins_in_the_export(client, lead, project, decided):
    Review.objects.filter(item=decided[0]).update(corrected_response="Plus costs $4 per month, billed monthly.")
    lines = b"".join(client.get(export_url(project), **token_header(lead)).streaming_content).decode().splitlines()
    assert json.loads(lines[0])["messages"][1]["content"] == "Plus costs $4 per month, billed monthly."
