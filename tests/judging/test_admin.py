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


def test_the_admin_action_queues_rules_and_regating(admin_client, project, django_capture_on_commit_callbacks):
    make_items(project, ["Use Dropbox.", "Use Acme."])
    rule = LabelFunction.objects.create(
        project=project, name="competitor", kind="keywords", params={"keywords": ["Dropbox"]}, reason="competitor"
    )
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = admin_client.post(
            reverse("admin:judging_labelfunction_changelist"),
            {"action": "apply_and_regate", "_selected_action": [rule.pk]},
        )
    assert response.status_code == 302
    assert not GateDecision.objects.exists() and len(queued) == 1  # queued, not done in the request
    queued[0]()
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


# Derived rows (the gate's decisions, verdicts, rule hits, runs) and history rows are the record: the admin
# shows them and changes nothing. Each model's admin is tried as a superuser, who holds every permission.
READ_ONLY = [
    "gatedecision",
    "verdict",
    "rulehit",
    "judgerun",
    "labelfunctionversion",
    "gatingpolicy",
    "gatingpolicychange",
]


def _rows(project, model: str):
    from annotations.models import ReviewChange
    from judging.models import GatingPolicy, GatingPolicyChange, JudgeRun, RuleHit, Verdict

    models = {
        "gatingpolicy": GatingPolicy,
        "gatingpolicychange": GatingPolicyChange,
        "gatedecision": GateDecision,
        "verdict": Verdict,
        "rulehit": RuleHit,
        "judgerun": JudgeRun,
        "labelfunctionversion": LabelFunctionVersion,
        "reviewchange": ReviewChange,
    }
    return models[model].objects.all()


@pytest.fixture
def decided_project(project):
    from tests.distillation.test_training_sets import decide_items

    decide_items(project)
    label_function = LabelFunction.objects.get()
    LabelFunctionVersion.objects.create(
        label_function=label_function, project=project, version=1, action="create", after=label_function.snapshot()
    )
    return project


@pytest.mark.parametrize("model", READ_ONLY)
def test_derived_and_history_rows_are_view_only_in_the_admin(admin_client, decided_project, model):
    rows = _rows(decided_project, model)
    row = rows.first()
    before = list(rows.order_by("pk").values())
    change = reverse(f"admin:judging_{model}_change", args=[row.pk])
    page = admin_client.get(change)
    assert page.status_code == 200  # shown...
    assert 'name="_save"' not in page.content.decode()  # ...with no Save button
    assert admin_client.get(reverse(f"admin:judging_{model}_changelist")).status_code == 200
    assert admin_client.get(reverse(f"admin:judging_{model}_add")).status_code == 403
    assert admin_client.post(change, {}).status_code == 403
    delete = reverse(f"admin:judging_{model}_delete", args=[row.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    admin_client.post(
        reverse(f"admin:judging_{model}_changelist"),
        {"action": "delete_selected", "_selected_action": [r.pk for r in rows], "post": "yes"},
    )
    assert list(rows.order_by("pk").values()) == before


def test_staff_cannot_flip_a_vetoed_item_to_accept_in_the_admin(
    admin_client, decided_project, django_capture_on_commit_callbacks
):
    """The reported exploit: a vetoed item's decision set to accept in the admin was exported."""
    from tests.distillation.test_training_sets import build

    vetoed = GateDecision.objects.get(item__external_id="d1")
    assert (vetoed.outcome, vetoed.vetoed) == ("reject", True)
    response = admin_client.post(
        reverse("admin:judging_gatedecision_change", args=[vetoed.pk]),
        {
            "item": vetoed.item_id,
            "outcome": "accept",
            "basis": "judge",
            "basis_decision": "accept",
            "reasons": "[]",
            "judge_run": "",
        },
    )
    assert response.status_code == 403
    vetoed.refresh_from_db()
    assert (vetoed.outcome, vetoed.vetoed) == ("reject", True)
    training_set = build(decided_project, django_capture_on_commit_callbacks)
    exported = set(training_set.rows.values_list("external_id", flat=True))
    assert exported and "d1" not in exported


def test_staff_cannot_turn_a_verdict_into_an_accept_in_the_admin(admin_client, decided_project):
    from judging.models import Verdict

    verdict = Verdict.objects.get(item__external_id="h1")
    response = admin_client.post(
        reverse("admin:judging_verdict_change", args=[verdict.pk]),
        {
            "run": verdict.run_id,
            "item": verdict.item_id,
            "verdict": "accept",
            "rationale": "fine",
            "tokens_in": 0,
            "tokens_out": 0,
            "latency_ms": 0,
        },
    )
    assert response.status_code == 403
    verdict.refresh_from_db()
    assert verdict.verdict == "reject"
    assert GateDecision.objects.get(item__external_id="h1").outcome == "reject"


def test_staff_cannot_delete_a_rule_hit_to_lift_a_veto(admin_client, decided_project):
    from judging.models import RuleHit

    hit = RuleHit.objects.get(item__external_id="d1")
    response = admin_client.post(reverse("admin:judging_rulehit_delete", args=[hit.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert RuleHit.objects.filter(pk=hit.pk).exists()


def test_staff_cannot_mark_a_run_finished_in_the_admin(admin_client, decided_project):
    from judging.models import JudgeRun

    run = JudgeRun.objects.create(project=decided_project, backend="openai", model="m", status="running")
    response = admin_client.post(
        reverse("admin:judging_judgerun_change", args=[run.pk]),
        {"project": decided_project.pk, "backend": "openai", "model": "m", "status": "finished", "config": "{}"},
    )
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.status == "running"


def test_deleting_a_rule_in_the_admin_takes_its_hits_and_keeps_its_history(
    admin_client, decided_project, django_capture_on_commit_callbacks
):
    rule = LabelFunction.objects.get()
    assert rule.hits.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:judging_labelfunction_delete", args=[rule.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not LabelFunction.objects.exists()
    assert LabelFunctionVersion.objects.filter(action="delete", changed_by__username="root").exists()
    assert GateDecision.objects.get(item__external_id="d1").outcome == "accept"  # re-gated without the rule


def test_deleting_a_project_in_the_admin_takes_everything_in_it(admin_client, decided_project):
    """The project is gone, and with it its records (the one way a history row goes)."""
    from annotations.models import Item

    response = admin_client.post(
        reverse("admin:annotations_project_delete", args=[decided_project.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    assert not Item.objects.exists() and not GateDecision.objects.exists()


def test_the_policy_page_in_the_admin_shows_its_tiers_and_points_to_the_policy_page(admin_client, decided_project):
    from judging.models import GatingPolicy

    policy = GatingPolicy.objects.get(project=decided_project)
    page = admin_client.get(reverse("admin:judging_gatingpolicy_change", args=[policy.pk])).content.decode()
    tier = policy.tiers.get()
    assert "Tiers" in page or "Policy tiers" in page
    assert f"run {tier.run_id}" in page
    assert 'name="tiers-0-threshold"' not in page  # read-only inline: no inputs
