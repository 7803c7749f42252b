"""Label functions in the Django admin: validated on save, applied with an action."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from judging.models import GateDecision, LabelFunction, LabelFunctionVersion
from tests.conftest import make_items


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", password="root-pass-123"))
    return client


def add_rule(admin_client, project, **fields):
    data = {
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
        "task_types": "[]",
        "project": project.pk,
        "name": "rule",
        "kind": "regex",
        "field": "response",
        "reason": "bad",
        "active": "on",
        "params": '{"pattern": "x"}',
        **fields,
    }
    return admin_client.post(reverse("admin:judging_labelfunction_add"), data)


def test_a_valid_rule_is_saved_with_its_defaults(admin_client, project):
    response = add_rule(admin_client, project, params='{"pattern": "Dropbox"}')
    assert response.status_code == 302
    assert LabelFunction.objects.get().params == {"pattern": "Dropbox", "case_sensitive": False}


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("regex", '{"pattern": "(?<=a)b"}', "RE2 cannot compile this pattern"),
        ("keywords", '{"keywords": []}', "give at least one keyword"),
        ("keywords", '{"keywords": ["Dropbox", "   "]}', "keyword 2 is blank"),
        ("length", '{"min": 9, "max": 3}', "min (9) is greater than max (3)"),
        ("regex", "[1, 2]", "must be a JSON object"),
    ],
)
def test_a_bad_rule_is_refused_with_the_reason(admin_client, project, kind, params, message):
    response = add_rule(admin_client, project, kind=kind, params=params)
    assert response.status_code == 200 and message in response.content.decode()
    assert not LabelFunction.objects.exists()


def test_the_admin_action_applies_rules_and_regates(admin_client, project):
    make_items(project, ["Use Dropbox.", "Use Acme."])
    rule = LabelFunction.objects.create(
        project=project, name="competitor", kind="keywords", params={"keywords": ["Dropbox"]}, reason="competitor"
    )
    response = admin_client.post(
        reverse("admin:judging_labelfunction_changelist"),
        {"action": "apply_and_regate", "_selected_action": [rule.pk]},
    )
    assert response.status_code == 302
    decisions = dict(GateDecision.objects.values_list("item__response", "outcome"))
    assert decisions == {"Use Dropbox.": "reject", "Use Acme.": "pending"}


def test_smes_cannot_reach_the_admin(client, sme):
    client.force_login(sme)
    response = client.get(reverse("admin:judging_labelfunction_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_adding_and_editing_in_the_admin_versions_the_rule_and_regates(
    admin_client, project, django_capture_on_commit_callbacks
):
    make_items(project, ["Use Dropbox.", "Use Acme."])
    with django_capture_on_commit_callbacks(execute=True):
        add_rule(admin_client, project, kind="keywords", params='{"keywords": ["Dropbox"]}', task_types='["billing"]')
    rule = LabelFunction.objects.get()
    assert rule.task_types == ["billing"] and rule.version == 1
    assert not GateDecision.objects.filter(outcome="reject").exists()  # the items have no task type
    change = reverse("admin:judging_labelfunction_change", args=[rule.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            change,
            {
                "versions-TOTAL_FORMS": "1",
                "versions-INITIAL_FORMS": "1",
                "versions-0-id": rule.versions.get().pk,
                "versions-0-label_function": rule.pk,
                "project": project.pk,
                "name": "rule",
                "kind": "keywords",
                "field": "response",
                "reason": "bad",
                "active": "on",
                "params": '{"keywords": ["Dropbox"]}',
                "task_types": "[]",
            },
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    versions = list(
        LabelFunctionVersion.objects.order_by("version").values_list("version", "action", "changed_by__username")
    )
    assert versions == [(1, "create", "root"), (2, "update", "root")]
    assert dict(GateDecision.objects.values_list("item__response", "outcome"))["Use Dropbox."] == "reject"
    history = admin_client.get(change).content.decode()
    assert "update" in history and "create" in history  # the history inline on the rule's page
