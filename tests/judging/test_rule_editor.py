"""The rule editor for leads: permissions, field errors that store nothing, versioned saves that queue a
re-gating, activation and deletion, and the live dry run's counts, SME conflict figure and escaping."""

import json

import pytest
from django.urls import reverse

from annotations.models import Item, Review
from judging.models import LabelFunction, LabelFunctionVersion, RegateRequest, RuleHit
from judging.rule_views import param_fields, params_from
from judging.selectors import label_function_dry_run, snippet
from judging.services import label_function_save
from tests.conftest import make_items
from tests.judging.test_label_function_editing import RESPONSES


@pytest.fixture
def items(project):
    """The five items of the rule-editing tests (Dropbox in r0 and r2, OneDrive in r2 and r3); SMEs accepted r0
    and r1, rejected r2; r3 and r4 have no review (no judge run: the editor's dry run does not read verdicts)."""
    items = make_items(project, RESPONSES)
    for item, decision in zip(items[:3], ["accept", "accept", "reject"], strict=True):
        Review.objects.create(item=item, decision=decision, origin="import")
    return items


def keyword_form(**changes) -> dict:
    data = {
        "name": "competitor",
        "reason": "names a competitor",
        "kind": "keywords",
        "keywords-keywords": "Dropbox\nOneDrive",
        "field": "response",
        "task_types": "",
        "active": "on",
    }
    data.update(changes)
    return data


def url(project, name, *args):
    return reverse(f"judging:{name}", args=(project.slug, *args))


@pytest.fixture
def rule(project, lead):
    return label_function_save(
        rule=LabelFunction(
            project=project, name="competitor", kind="keywords", params={"keywords": ["Dropbox"]}, reason="competitor"
        ),
        user=lead,
        regate=False,
    )


# ------------------------------------------------------------------ permissions


@pytest.mark.parametrize("persona, status", [("sme", 403), ("outsider", 404)])
def test_smes_and_outsiders_can_neither_see_nor_use_the_editor(client, project, rule, request, persona, status):
    client.force_login(request.getfixturevalue(persona))
    assert client.get(url(project, "rule_new")).status_code == status
    assert client.get(url(project, "rule_edit", rule.pk)).status_code == status
    assert client.post(url(project, "rule_new"), keyword_form(name="other")).status_code == status
    assert client.post(url(project, "rule_edit", rule.pk), keyword_form()).status_code == status
    assert client.post(url(project, "rule_active", rule.pk), {"active": "0"}).status_code == status
    assert client.post(url(project, "rule_delete", rule.pk), {"confirm": "yes"}).status_code == status
    assert client.post(url(project, "rule_dry_run"), keyword_form()).status_code == status
    assert list(LabelFunction.objects.values_list("name", "active", "version")) == [("competitor", True, 1)]


def test_anonymous_visitors_are_sent_to_log_in(client, project, rule):
    response = client.post(url(project, "rule_dry_run"), keyword_form())
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_dry_run_needs_the_csrf_token(project, lead, items):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(lead)
    assert client.post(url(project, "rule_dry_run"), keyword_form()).status_code == 403


def test_a_lead_who_is_not_staff_reaches_the_editor_from_the_rules_page(client, project, lead, rule):
    assert not lead.is_staff
    client.force_login(lead)
    page = client.get(url(project, "rules")).content.decode()
    assert url(project, "rule_new") in page and url(project, "rule_edit", rule.pk) in page
    editor = client.get(url(project, "rule_edit", rule.pk))
    assert editor.status_code == 200
    assert "Dropbox</textarea>" in editor.content.decode()


# ------------------------------------------------------------------ the form


def test_the_form_follows_each_kinds_params_schema():
    widgets = {
        (p.kind, p.name): p.widget for kind in ("regex", "keywords", "length", "pii") for p in param_fields(kind)
    }
    assert widgets == {
        ("regex", "pattern"): "text",
        ("regex", "case_sensitive"): "checkbox",
        ("keywords", "keywords"): "lines",
        ("length", "min"): "number",
        ("length", "max"): "number",
        ("length", "unit"): "select",
        ("pii", "types"): "checkboxes",
    }
    from django.http import QueryDict

    posted = QueryDict("length-min=&length-max=80&length-unit=words&pii-types=email&pii-types=card")
    assert params_from("length", posted) == {"min": None, "max": "80", "unit": "words"}
    assert params_from("pii", posted) == {"types": ["email", "card"]}
    assert params_from("regex", QueryDict("regex-pattern=a%2B")) == {"pattern": "a+", "case_sensitive": False}


def test_a_bad_regex_is_named_next_to_its_field_and_nothing_is_stored(client, project, lead):
    client.force_login(lead)
    data = keyword_form(kind="regex", **{"regex-pattern": "(unclosed"})
    response = client.post(url(project, "rule_new"), data)
    assert response.status_code == 400
    page = response.content.decode()
    assert 'data-error-for="regex-pattern">RE2 cannot compile this pattern: missing ): (unclosed<' in page
    assert 'value="(unclosed"' in page  # what the lead typed is kept
    assert not LabelFunction.objects.exists() and not LabelFunctionVersion.objects.exists()


def test_a_blank_keyword_list_a_bad_length_and_a_taken_name_are_each_named(client, project, lead, rule):
    client.force_login(lead)
    response = client.post(url(project, "rule_new"), keyword_form(**{"keywords-keywords": "  \n"}))
    assert 'data-error-for="keywords-keywords">give at least one keyword<' in response.content.decode()
    response = client.post(
        url(project, "rule_new"), keyword_form(name="len", kind="length", **{"length-min": "9", "length-max": "3"})
    )
    assert 'data-error-for="length-all">min (9) is greater than max (3)<' in response.content.decode()
    response = client.post(url(project, "rule_new"), keyword_form())
    assert response.status_code == 400
    assert "This project already has a rule named &#x27;competitor&#x27;." in response.content.decode()
    assert LabelFunction.objects.count() == 1 and LabelFunctionVersion.objects.count() == 1


def test_saving_a_new_rule_writes_a_version_and_queues_a_regating(
    client, project, lead, items, django_capture_on_commit_callbacks
):
    client.force_login(lead)
    data = keyword_form(task_types="billing, refunds, billing")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url(project, "rule_new"), data, follow=True)
    assert response.redirect_chain[-1][0] == url(project, "rules")
    rule = LabelFunction.objects.get()
    assert (rule.kind, rule.params, rule.task_types, rule.active) == (
        "keywords",
        {"keywords": ["Dropbox", "OneDrive"]},
        ["billing", "refunds"],
        True,
    )
    version = LabelFunctionVersion.objects.get()
    assert (version.version, version.action, version.changed_by) == (1, "create", lead)
    assert "saved as version 1. Re-gating queued" in response.content.decode()
    assert RegateRequest.objects.filter(project=project).exists()


def test_editing_records_what_changed_and_the_editor_shows_the_history(client, project, lead, rule):
    client.force_login(lead)
    data = keyword_form(**{"keywords-keywords": "Dropbox\nBox"})
    client.post(url(project, "rule_edit", rule.pk), data)
    rule.refresh_from_db()
    assert rule.version == 2 and rule.params == {"keywords": ["Dropbox", "Box"]} and rule.reason == data["reason"]
    latest = LabelFunctionVersion.objects.filter(label_function=rule).first()
    assert (latest.action, latest.changed_by, latest.before["params"]) == ("update", lead, {"keywords": ["Dropbox"]})
    page = client.get(url(project, "rule_edit", rule.pk)).content.decode()
    history = page[page.index('class="history"') :]
    assert "<b>params</b>" in history and "&quot;Box&quot;" in history and "<td>lead</td>" in history
    # Saving again without a change writes nothing.
    response = client.post(url(project, "rule_edit", rule.pk), data, follow=True)
    assert "nothing changed" in response.content.decode()
    assert LabelFunctionVersion.objects.filter(label_function=rule).count() == 2


def test_deactivate_activate_and_delete(client, project, lead, rule):
    client.force_login(lead)
    client.post(url(project, "rule_active", rule.pk), {"active": "0"})
    rule.refresh_from_db()
    assert not rule.active and rule.version == 2
    client.post(url(project, "rule_active", rule.pk), {"active": "1"})
    rule.refresh_from_db()
    assert rule.active and rule.version == 3
    client.post(url(project, "rule_delete", rule.pk))  # not confirmed
    assert LabelFunction.objects.filter(pk=rule.pk).exists()
    response = client.post(url(project, "rule_delete", rule.pk), {"confirm": "yes"})
    assert response.status_code == 302 and not LabelFunction.objects.exists()
    assert list(LabelFunctionVersion.objects.order_by("version").values_list("action", flat=True)) == [
        "create",
        "update",
        "update",
        "delete",
    ]


# ------------------------------------------------------------------ the dry run


def dry_run(client, project, **changes):
    response = client.post(url(project, "rule_dry_run"), keyword_form(**changes))
    return response.status_code, json.loads(response.content)


def test_the_dry_run_counts_rejections_and_conflicts_with_the_smes_and_stores_nothing(client, project, lead, items):
    client.force_login(lead)
    status, data = dry_run(client, project, name="", reason="")  # name and reason are not needed yet
    assert status == 200
    # Dropbox/OneDrive reject r0 (SME accept), r2 (SME reject), r3 (no review).
    assert (data["items"], data["scanned"], data["complete"], data["would_reject"]) == (5, 5, True, 3)
    assert {k: data["sme"][k] for k in ("accepted", "rejected", "n", "share")} == {
        "accepted": 1,
        "rejected": 1,
        "n": 2,
        "share": 0.5,
    }
    low, high = data["sme"]["interval"]
    assert low < 0.5 < high and data["sme"]["small_n"]
    assert [e["external_id"] for e in data["examples"]] == ["r0", "r2", "r3"]
    first = data["examples"][0]
    assert first["url"] == f"/projects/{project.slug}/items/{items[0].pk}/" and first["sme"] == "accept"
    assert first["snippet"] == {"before": "Switch to ", "match": "Dropbox", "after": "."}
    assert not LabelFunction.objects.exists() and not RuleHit.objects.exists()


def test_the_dry_run_reads_only_the_first_items_and_says_so(project, items):
    rule = LabelFunction(project=project, kind="keywords", params={"keywords": ["OneDrive"]}, field="response")
    result = label_function_dry_run(label_function=rule, max_items=3)
    # Only r0..r2 are read: r2 names OneDrive, r3 (also OneDrive) is beyond the cap.
    assert (result["items"], result["scanned"], result["complete"], result["would_reject"]) == (5, 3, False, 1)
    whole = label_function_dry_run(label_function=rule)
    assert (whole["scanned"], whole["complete"], whole["would_reject"]) == (5, True, 2)


def test_the_dry_run_names_a_bad_param_and_ignores_other_kinds_inputs(client, project, lead, items):
    client.force_login(lead)
    status, data = dry_run(client, project, kind="regex", **{"regex-pattern": "a(b"})
    assert status == 400
    assert data["errors"] == {"regex-pattern": ["RE2 cannot compile this pattern: missing ): a(b"]}
    status, data = dry_run(client, project, kind="regex", **{"regex-pattern": "month|better", "keywords-keywords": ""})
    assert status == 200 and data["would_reject"] == 2
    assert [e["snippet"]["match"] for e in data["examples"]] == ["month", "better"]


def test_the_dry_run_sends_item_text_as_json_data_never_markup(client, project, lead):
    client.force_login(lead)
    Item.objects.create(
        project=project, external_id="<i>x</i>", prompt="p", response="<script>alert(1)</script> Dropbox"
    )
    response = client.post(url(project, "rule_dry_run"), keyword_form())
    assert response["Content-Type"] == "application/json"
    example = json.loads(response.content)["examples"][0]
    assert example["snippet"]["before"] == "<script>alert(1)</script> " and example["external_id"] == "<i>x</i>"


def test_a_snippet_cuts_long_text_around_the_match():
    text = "a" * 200 + " Dropbox " + "b" * 200
    cut = snippet(text, "keywords", {"keywords": ["dropbox"]}, context=10)
    assert cut == {"before": "…" + "a" * 9 + " ", "match": "Dropbox", "after": " " + "b" * 9 + "…"}
    assert snippet("short", "length", {"min": 10, "max": None, "unit": "chars"}) == {
        "before": "short",
        "match": "",
        "after": "",
    }


def test_the_dry_run_stops_when_its_time_is_up_and_says_how_far_it_read(project):
    make_items(project, ["Dropbox"] * 600)
    rule = LabelFunction(project=project, kind="keywords", params={"keywords": ["Dropbox"]}, field="response")
    # No time at all: it checks the clock every 256 items, so it reads the first 256 and stops.
    result = label_function_dry_run(label_function=rule, max_items=10_000, seconds=0)
    assert (result["items"], result["scanned"], result["complete"], result["would_reject"]) == (600, 256, False, 256)


def test_length_and_pii_rules_save_from_their_inputs(client, project, lead):
    client.force_login(lead)
    length = {"kind": "length", "length-min": "", "length-max": "80", "length-unit": "words"}
    assert client.post(url(project, "rule_new"), keyword_form(name="long", **length)).status_code == 302
    pii = {"kind": "pii", "pii-types": ["email", "card"]}
    assert client.post(url(project, "rule_new"), keyword_form(name="pii", **pii)).status_code == 302
    saved = dict(LabelFunction.objects.values_list("name", "params"))
    assert saved == {"long": {"min": None, "max": 80, "unit": "words"}, "pii": {"types": ["card", "email"]}}
    response = client.post(url(project, "rule_new"), keyword_form(name="none", kind="pii"))  # no type ticked
    assert 'data-error-for="pii-types">pick at least one of email, phone, card<' in response.content.decode()
    page = client.get(url(project, "rule_edit", LabelFunction.objects.get(name="pii").pk)).content.decode()
    assert 'name="pii-types" value="card" checked' in page and 'name="pii-types" value="phone">' in page


def test_switching_on_a_rule_whose_stored_params_no_longer_validate_says_why(client, project, lead):
    rule = LabelFunction.objects.create(
        project=project, name="old", kind="regex", params={"pattern": "(a"}, reason="r", active=False
    )
    client.force_login(lead)
    response = client.post(url(project, "rule_active", rule.pk), {"active": "1"}, follow=True)
    assert "Rule &#x27;old&#x27; was not changed: pattern: RE2 cannot compile" in response.content.decode()
    rule.refresh_from_db()
    assert not rule.active and not LabelFunctionVersion.objects.exists()


def test_a_second_identical_dry_run_reuses_the_compiled_rule(client, project, lead, items, monkeypatch):
    import uuid

    from judging import label_functions, rule_views

    compiles = []
    real_init = label_functions.RuleSet.__init__

    def counted(self, rules):
        compiles.append(1)
        real_init(self, rules)

    monkeypatch.setattr(label_functions.RuleSet, "__init__", counted)
    monkeypatch.setattr(rule_views, "DRY_RUN_SECONDS", 0.0)  # any compile is over a budget of 0 s
    client.force_login(lead)
    words = f"Dropbox\nOneDrive\nunseen-{uuid.uuid4().hex}"  # a rule no other test compiled in this process
    status, first = dry_run(client, project, **{"keywords-keywords": words})
    assert status == 200 and len(compiles) == 1 and first["would_reject"] == 3
    assert first["compile"]["fresh"] and first["compile"]["over_budget"]
    assert (
        "Compiling this rule alone took" in first["compile"]["note"]
        and "over the dry run's 0 s" in first["compile"]["note"]
    )
    # Typing in the name, the reason, or reordering nothing: the same rule, not compiled again.
    status, second = dry_run(client, project, name="typed", reason="more", **{"keywords-keywords": words})
    assert status == 200 and len(compiles) == 1 and second["would_reject"] == 3
    assert not second["compile"]["fresh"] and not second["compile"]["over_budget"] and second["compile"]["note"] == ""
    assert second["examples"] == first["examples"]
    # Another keyword, or another field: compiled anew.
    status, third = dry_run(client, project, **{"keywords-keywords": words + "\nmonth"})
    assert status == 200 and len(compiles) == 2 and third["would_reject"] == 4
    status, fourth = dry_run(client, project, field="prompt", **{"keywords-keywords": words})
    assert status == 200 and len(compiles) == 3 and fourth["compile"]["fresh"]


def test_the_compiled_rule_cache_keys_on_params_not_their_order():
    from judging.label_functions import rule_compiled

    a, _ = rule_compiled("length", {"min": 3, "max": 977, "unit": "chars"})
    b, fresh_b = rule_compiled("length", {"unit": "chars", "max": 977, "min": 3})
    assert b is a and not fresh_b
    c, fresh_c = rule_compiled("length", {"min": 3, "max": 978, "unit": "chars"})
    assert c is not a and fresh_c and c.params["max"] == 978
