"""Editing rules safely: versions, permissions, dry run, re-gating in the background, analytics."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse

from annotations.models import Item, Review
from judging.models import GateDecision, JudgeRun, LabelFunction, LabelFunctionVersion, RuleHit, Verdict
from judging.selectors import label_function_dry_run, label_function_stats
from judging.services import (
    gate_apply,
    gating_policy_set,
    label_function_delete,
    label_function_save,
    label_functions_apply,
)
from tests.conftest import make_items

RESPONSES = ["Switch to Dropbox.", "Plus is $4 a month.", "Dropbox and OneDrive are better.", "Try OneDrive.", "Fine."]


@pytest.fixture
def items(project):
    """Five items: SMEs accepted 0 and 1 and rejected 2; the judge accepted 3 and rejected 4."""
    items = make_items(project, RESPONSES)
    for item, decision in zip(items[:3], ["accept", "accept", "reject"], strict=True):
        Review.objects.create(item=item, decision=decision, origin="import")
    run = JudgeRun.objects.create(project=project, backend="openai", model="m", status="finished")
    for item, verdict in zip(items, ["accept", "accept", "reject", "accept", "reject"], strict=True):
        Verdict.objects.create(run=run, item=item, verdict=verdict)
    gating_policy_set(project=project, tiers=[(run, None)])  # a lead chose the run
    return items


def competitor_rule(project, **fields):
    return LabelFunction(
        project=project,
        name="competitor",
        kind="keywords",
        params={"keywords": ["Dropbox"]},
        reason="competitor",
        **fields,
    )


def outcomes():
    return dict(GateDecision.objects.values_list("item__response", "outcome"))


def test_every_change_is_versioned_with_who_when_before_after(project, staff, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        rule = label_function_save(rule=competitor_rule(project), user=staff)
        rule.params = {"keywords": ["Dropbox", "OneDrive"]}
        label_function_save(rule=rule, user=staff)
        label_function_save(rule=rule, user=staff)  # no change: no new version
    versions = list(LabelFunctionVersion.objects.order_by("version"))
    assert [(v.version, v.action, v.changed_by) for v in versions] == [(1, "create", staff), (2, "update", staff)]
    assert versions[0].before == {} and versions[0].after["params"] == {"keywords": ["Dropbox"]}
    assert versions[1].before["params"] == {"keywords": ["Dropbox"]}
    assert versions[1].after["params"] == {"keywords": ["Dropbox", "OneDrive"]}
    assert rule.version == 2
    with django_capture_on_commit_callbacks(execute=True):
        label_function_delete(rule=rule, user=staff)
    deleted = LabelFunctionVersion.objects.get(action="delete")
    assert deleted.version == 3 and deleted.before["name"] == "competitor" and deleted.label_function is None


def test_each_hit_records_the_rule_version_that_produced_it(project, items, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        rule = label_function_save(rule=competitor_rule(project))
    assert set(RuleHit.objects.values_list("version", flat=True)) == {1}
    rule.params = {"keywords": ["OneDrive"]}
    with django_capture_on_commit_callbacks(execute=True):
        label_function_save(rule=rule)
    assert set(RuleHit.objects.values_list("item__response", "version")) == {
        ("Dropbox and OneDrive are better.", 2),
        ("Try OneDrive.", 2),
    }


def test_saving_a_rule_regates_the_project_and_the_accepted_set_follows(
    project, items, django_capture_on_commit_callbacks
):
    gate_apply(project=project)
    assert outcomes()["Switch to Dropbox."] == "accept"
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        rule = label_function_save(rule=competitor_rule(project))
    assert len(callbacks) == 1  # enqueued after commit, run by the (here in-process) worker
    assert outcomes() == {
        "Switch to Dropbox.": "reject",
        "Plus is $4 a month.": "accept",
        "Dropbox and OneDrive are better.": "reject",
        "Try OneDrive.": "accept",
        "Fine.": "reject",
    }
    rule.active = False
    with django_capture_on_commit_callbacks(execute=True):
        label_function_save(rule=rule)
    assert outcomes()["Switch to Dropbox."] == "accept" and not RuleHit.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        label_function_delete(rule=rule)
    assert outcomes()["Switch to Dropbox."] == "accept"


def test_the_dry_run_counts_conflicts_and_stores_nothing(project, items):
    rule = LabelFunction.objects.create(
        project=project,
        name="ms",
        kind="keywords",
        params={"keywords": ["Dropbox", "OneDrive"]},
        reason="x",
        active=False,
    )
    result = label_function_dry_run(label_function=rule)
    assert (result["items"], result["would_reject"]) == (5, 3)
    assert (result["sme_accepted"], result["sme_rejected"], result["judge_accepted"]) == (1, 1, 2)
    assert [e["external_id"] for e in result["examples"]] == ["r0", "r2", "r3"]
    assert not RuleHit.objects.exists() and not GateDecision.objects.exists()


def test_the_dry_run_in_the_admin_escapes_the_examples(client, project, items):
    user = get_user_model().objects.create_superuser("root", password="root-pass-123")
    client.force_login(user)
    Item.objects.create(
        project=project, external_id="html", prompt="p", response="<b>Dropbox</b> rocks <script>alert(1)</script>"
    )
    rule = LabelFunction.objects.create(
        project=project, name="ms", kind="keywords", params={"keywords": ["Dropbox"]}, reason="x"
    )
    response = client.post(
        reverse("admin:judging_labelfunction_changelist"), {"action": "dry_run", "_selected_action": [rule.pk]}
    )
    page = response.content.decode()
    assert response.status_code == 200 and "Would reject</th><td>3</td>" in page
    assert "Switch to Dropbox." in page
    assert "&lt;b&gt;Dropbox&lt;/b&gt; rocks &lt;script&gt;" in page and "<script>alert(1)" not in page
    assert not RuleHit.objects.exists()


def test_staff_without_the_permission_cannot_edit_rules(client, project):
    clerk = get_user_model().objects.create_user("clerk", password="clerk-pass-123", is_staff=True)
    client.force_login(clerk)
    url = reverse("admin:judging_labelfunction_add")
    assert client.get(url).status_code == 403
    clerk.user_permissions.add(*Permission.objects.filter(codename__in=["add_labelfunction", "view_labelfunction"]))
    assert client.get(url).status_code == 200


def test_analytics_in_snorkels_terms(project, items, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        label_function_save(rule=competitor_rule(project))
        label_function_save(
            rule=LabelFunction(
                project=project,
                name="onedrive",
                kind="keywords",
                params={"keywords": ["OneDrive"]},
                reason="competitor",
            )
        )
        label_function_save(
            rule=LabelFunction(project=project, name="off", kind="length", params={"max": 1}, reason="x", active=False)
        )
    stats = {row["rule"].name: row for row in label_function_stats(project)}
    dropbox, onedrive, off = stats["competitor"], stats["onedrive"], stats["off"]
    # Dropbox hits items 0 (SME accept) and 2 (SME reject); item 2 also hit by onedrive.
    assert (dropbox["hits"], dropbox["coverage"], dropbox["overlap"]) == (2, 0.4, 0.2)
    assert (dropbox["conflict_sme"], dropbox["conflict_judge"], dropbox["conflict"]) == (1, 0, 0.2)
    assert (dropbox["labelled_hits"], dropbox["empirical_accuracy"]) == (2, 0.5)
    # OneDrive hits items 2 (SME reject) and 3 (no SME review, judge accept).
    assert (onedrive["hits"], onedrive["overlap"], onedrive["conflict_judge"]) == (2, 0.2, 1)
    assert onedrive["empirical_accuracy"] == 1.0
    assert (off["hits"], off["empirical_accuracy"]) == (0, None)


def test_the_rules_page_shows_the_table_and_chart(client, lead, outsider, project, items):
    label_function_save(rule=competitor_rule(project))
    label_functions_apply(project=project)
    url = reverse("judging:rules", args=[project.slug])
    client.force_login(outsider)
    assert client.get(url).status_code == 404
    client.force_login(lead)
    page = client.get(url).content.decode()
    assert "<svg" in page and "competitor" in page and "0.400" in page and "0.500" in page


@pytest.fixture
def racing_rule(project, lead, monkeypatch):
    """A saved rule (version 1) whose next saves are held just after they validated the rule, inside their
    transactions, until two are there: then both number the next version at once (the race two tabs or two
    leads can run)."""
    import threading

    from judging import services

    rule = label_function_save(
        rule=LabelFunction(project=project, name="race", kind="keywords", params={"keywords": ["a"]}, reason="r"),
        user=lead,
        regate=False,
    )
    barrier = threading.Barrier(2, timeout=20)
    compile_rule = services.rule_set_for

    def held(label_functions):
        compiled = compile_rule(label_functions)
        barrier.wait()
        return compiled

    monkeypatch.setattr(services, "rule_set_for", held)
    return rule


def _save_at_once(rule, user, **options) -> list[BaseException]:
    """Two saves of ``rule`` at once, each from its own copy opened at its current version, one adding the
    keyword "b", the other "c"; returns what they raised."""
    from tests.conftest import run_concurrently

    def save(word):
        mine = LabelFunction.objects.get(pk=rule.pk)
        mine.params = {"keywords": [word]}
        label_function_save(rule=mine, user=user, regate=False, **options)

    return run_concurrently(save, [("b",), ("c",)])


@pytest.mark.django_db(transaction=True)
def test_two_saves_at_once_record_two_versions_not_one_number_twice(racing_rule, lead):
    assert _save_at_once(racing_rule, lead) == []
    versions = list(LabelFunctionVersion.objects.filter(label_function=racing_rule).order_by("version"))
    assert [v.version for v in versions] == [1, 2, 3]
    assert versions[2].before == versions[1].after  # the second save numbered after the first, saw its state
    racing_rule.refresh_from_db()
    assert racing_rule.version == 3 and racing_rule.params["keywords"] == versions[2].after["params"]["keywords"]


@pytest.mark.django_db(transaction=True)
def test_two_saves_at_once_from_one_opened_version_save_one_and_refuse_the_other(racing_rule, lead):
    from judging.services import RuleVersionConflict

    errors = _save_at_once(racing_rule, lead, expected_version=1)
    assert len(errors) == 1 and isinstance(errors[0], RuleVersionConflict) and errors[0].version == 2
    versions = LabelFunctionVersion.objects.filter(label_function=racing_rule).values_list("version", flat=True)
    assert sorted(versions) == [1, 2]


def test_the_database_refuses_a_version_number_recorded_twice(project, lead):
    from django.db import IntegrityError, transaction

    rule = label_function_save(
        rule=LabelFunction(project=project, name="once", kind="keywords", params={"keywords": ["a"]}, reason="r"),
        user=lead,
        regate=False,
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        LabelFunctionVersion.objects.create(label_function=rule, project=project, version=1, action="update")
