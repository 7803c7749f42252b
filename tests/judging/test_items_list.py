"""The items list and the item page: who may see them, every filter, keyset pages, capped counts, bulk actions
(logged), why an item was decided and who reviewed it, and untrusted text kept as text."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from annotations.models import ImportJob, Item, Membership, Project, Review, ReviewChange, SampleDraw
from annotations.queue import in_sme_queue, queue_add
from distillation.models import TrainingSet, TrainingSetRow
from judging.items import count_capped, items_filtered, items_page
from judging.models import ItemBulkAction, JudgeRun, LabelFunction, Verdict
from judging.services import gate_apply, gating_policy_set, label_functions_apply

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def build_story(project: Project, sme) -> dict:
    """Items decided every way: by SMEs (accept, reject), by the gating run (accept 0.9, reject 0.2), vetoed by a
    rule after the judge accepted, pending, and one whose text is hostile HTML. Returns ``{external_id: Item}``
    and the run."""
    rows = [
        # external_id, response, task type, source model
        ("sme-acc", "Plus costs $4 a month.", "billing", "small"),
        ("sme-rej", "Plus costs $40 a month.", "billing", "small"),
        ("judge-acc", "Reset it from Settings.", "howto", "big"),
        ("judge-rej", "Nobody knows.", "howto", "big"),
        ("vetoed", "Use CompetitorCo instead.", "howto", "big"),
        ("pending", "Maybe.", "chat", "small"),
        ("hostile", HOSTILE, HOSTILE, "small"),
    ]
    items = {
        ext: Item.objects.create(
            project=project, external_id=ext, prompt=f"Question {ext}?", response=response, task_type=task,
            source_model=model,
        )
        for ext, response, task, model in rows
    }  # fmt: skip
    Review.objects.create(item=items["sme-acc"], reviewer=sme, decision="accept", comment="Right price.")
    Review.objects.create(item=items["sme-rej"], reviewer=sme, decision="reject", reason="inaccurate")
    ReviewChange.objects.create(
        item=items["sme-rej"], reviewer=sme, changed_by=sme, action="edit", before={"decision": "accept"},
        after={"decision": "reject", "reason": "inaccurate"},
    )  # fmt: skip
    run = JudgeRun.objects.create(
        project=project, backend="openai", model="judge-405b", status="finished", finished_at=timezone.now()
    )
    for ext, verdict, p in [("judge-acc", "accept", 0.9), ("judge-rej", "reject", 0.2), ("vetoed", "accept", 0.95),
                            ("hostile", "accept", 0.6)]:  # fmt: skip
        Verdict.objects.create(
            run=run, item=items[ext], verdict=verdict, rationale=f"The judge says {verdict}: {HOSTILE}",
            confidence=p, confidence_calibrated=p,
        )  # fmt: skip
    LabelFunction.objects.create(
        project=project, name="competitor", kind="keywords", params={"keywords": ["CompetitorCo"]}, reason="competitor"
    )
    label_functions_apply(project=project)
    gating_policy_set(project=project, tiers=[(run, None)])
    gate_apply(project=project)
    return {"items": items, "run": run}


@pytest.fixture
def story(project, sme, lead):
    return build_story(project, sme)


def ids(response) -> list[str]:
    return [row["external_id"] for row in response.context["page"].rows]


def list_url(project, **params) -> str:
    from urllib.parse import urlencode

    return reverse("judging:items", args=[project.slug]) + ("?" + urlencode(params) if params else "")


# Permissions


def test_an_outsider_gets_404_and_an_sme_403_on_every_items_page(client, project, story, sme, outsider):
    item = story["items"]["sme-rej"]
    pages = [
        ("get", list_url(project)),
        ("get", reverse("judging:item_detail", args=[project.slug, item.pk])),
        ("post", reverse("judging:items_bulk", args=[project.slug])),
    ]
    for user, status in ((outsider, 404), (sme, 403)):
        client.force_login(user)
        for method, url in pages:
            assert getattr(client, method)(url, {"action": "queue", "item": [item.pk]}).status_code == status, url
    assert not ItemBulkAction.objects.exists()
    assert not Item.objects.filter(in_sme_queue()).exists()
    client.logout()
    assert client.get(list_url(project)).status_code == 302  # to the log-in page


def test_a_lead_of_another_project_sees_none_of_this_ones_items(client, project, story):
    other = Project.objects.create(slug="other", name="Other")
    boss = get_user_model().objects.create_user("boss")
    Membership.objects.create(project=other, user=boss, role=Membership.Role.LEAD)
    client.force_login(boss)
    item = story["items"]["sme-acc"]
    assert client.get(list_url(project)).status_code == 404
    assert client.get(reverse("judging:item_detail", args=[project.slug, item.pk])).status_code == 404
    # Nor through their own project's URL.
    assert client.get(reverse("judging:item_detail", args=[other.slug, item.pk])).status_code == 404
    assert client.get(list_url(other)).context["page"].rows == []


def test_a_lead_who_is_not_staff_sees_the_list_and_the_item(client, project, story, lead):
    assert not lead.is_staff
    client.force_login(lead)
    assert client.get(list_url(project)).status_code == 200
    item = story["items"]["vetoed"]
    assert client.get(reverse("judging:item_detail", args=[project.slug, item.pk])).status_code == 200


# Filters, sort, pages, counts


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["hostile", "pending", "vetoed", "judge-rej", "judge-acc", "sme-rej", "sme-acc"]),
        ({"outcome": "accept"}, ["hostile", "judge-acc", "sme-acc"]),
        ({"outcome": "reject"}, ["vetoed", "judge-rej", "sme-rej"]),
        ({"outcome": "pending"}, ["pending"]),
        ({"basis": "sme"}, ["sme-rej", "sme-acc"]),
        ({"basis": "judge"}, ["hostile", "vetoed", "judge-rej", "judge-acc"]),
        ({"basis": "rule"}, ["vetoed"]),
        ({"basis": "pending"}, ["pending"]),
        ({"verdict": "accept"}, ["hostile", "vetoed", "judge-acc"]),
        ({"verdict": "none"}, ["pending", "sme-rej", "sme-acc"]),
        ({"confidence_min": "0.5", "confidence_max": "0.92"}, ["hostile", "judge-acc"]),
        ({"task_type": "howto"}, ["vetoed", "judge-rej", "judge-acc"]),
        ({"source_model": "big", "outcome": "reject"}, ["vetoed", "judge-rej"]),
        ({"q": "CompetitorCo"}, ["vetoed"]),
        ({"q": "sme-acc"}, ["sme-acc"]),  # an external id
        ({"sort": "-confidence"}, ["vetoed", "judge-acc", "hostile", "judge-rej"]),
        ({"sort": "external_id", "outcome": "accept"}, ["hostile", "judge-acc", "sme-acc"]),
    ],
)
def test_each_filter_and_sort_lists_the_matching_items(client, project, story, lead, params, expected):
    client.force_login(lead)
    response = client.get(list_url(project, **params))
    assert response.status_code == 200
    assert ids(response) == expected
    assert response.context["count"] == len(expected)
    assert not response.context["capped"]


def test_rule_reviewer_queue_and_import_filters(client, project, story, lead, sme):
    client.force_login(lead)
    rule = LabelFunction.objects.get(project=project)
    assert ids(client.get(list_url(project, rule=rule.pk))) == ["vetoed"]
    assert ids(client.get(list_url(project, reviewer=sme.pk))) == ["sme-rej", "sme-acc"]
    Review.objects.create(item=story["items"]["pending"], decision="accept", origin="import")
    assert ids(client.get(list_url(project, reviewer="imported"))) == ["pending"]
    queue_add(project=project, item_ids=[story["items"]["judge-rej"].pk])
    assert ids(client.get(list_url(project, queued="yes"))) == ["judge-rej"]
    # An import: the items created while it ran.
    job = ImportJob.objects.create(
        project=project, file="imports/x.jsonl", filename="x.jsonl", format="jsonl", status="done",
        started_at=timezone.now(),
    )  # fmt: skip
    late = Item.objects.create(project=project, external_id="late", prompt="p", response="r")
    ImportJob.objects.filter(pk=job.pk).update(finished_at=timezone.now() + timedelta(seconds=1))
    assert ids(client.get(list_url(project, import_job=job.pk))) == [late.external_id]


def test_another_run_can_be_chosen_for_the_verdict_filters(client, project, story, lead):
    other = JudgeRun.objects.create(project=project, backend="local", model="tfidf", status="finished")
    Verdict.objects.create(run=other, item=story["items"]["pending"], verdict="reject", confidence_calibrated=0.1)
    client.force_login(lead)
    assert ids(client.get(list_url(project, run=other.pk, verdict="reject"))) == ["pending"]
    assert ids(client.get(list_url(project, verdict="reject"))) == ["judge-rej"]  # the policy's run


def test_a_bad_filter_value_is_left_out_and_said(client, project, story, lead):
    client.force_login(lead)
    response = client.get(list_url(project, outcome="maybe", confidence_min="lots", task_type="chat"))
    assert response.status_code == 200
    assert ids(response) == ["pending"]
    assert "Left out of the filter" in response.content.decode()


def test_keyset_pages_visit_every_item_once_forwards_and_backwards(project, lead):
    Item.objects.bulk_create(
        Item(project=project, external_id=f"n{i:03d}", prompt="p", response="r") for i in range(2 * 50 + 7)
    )
    for sort in ("-id", "id", "external_id", "-external_id"):
        items = items_filtered(project, {}, None)
        seen, pages, cursor = [], [], None
        while True:
            page = items_page(items, sort=sort, after=cursor)
            seen += [row["external_id"] for row in page.rows]
            pages.append(page)
            if not page.after:
                break
            cursor = page.after
        assert len(seen) == 107 and len(set(seen)) == 107, sort
        assert [len(p.rows) for p in pages] == [50, 50, 7]
        back = items_page(items, sort=sort, before=pages[-1].before)
        assert [r["external_id"] for r in back.rows] == [r["external_id"] for r in pages[1].rows]
        assert back.before and back.after
        first = items_page(items, sort=sort, before=back.before)
        assert [r["id"] for r in first.rows] == [r["id"] for r in pages[0].rows]
        assert first.before is None


def test_the_confidence_sort_pages_through_ties(project, story):
    run = story["run"]
    more = Item.objects.bulk_create(
        Item(project=project, external_id=f"t{i:03d}", prompt="p", response="r") for i in range(60)
    )
    Verdict.objects.bulk_create(Verdict(run=run, item=i, verdict="accept", confidence_calibrated=0.5) for i in more)
    items = items_filtered(project, {}, run.pk, sort="confidence")
    first = items_page(items, sort="confidence")
    second = items_page(items, sort="confidence", after=first.after)
    got = [r["id"] for r in first.rows + second.rows]
    assert len(got) == len(set(got)) == 64  # the 4 judged items of the story and the 60 ties
    assert [r["confidence"] for r in first.rows + second.rows] == sorted(
        r["confidence"] for r in first.rows + second.rows
    )


def test_the_count_stops_at_its_cap_and_says_so(client, project, story, lead, monkeypatch):
    items = items_filtered(project, {}, None)
    assert count_capped(items, cap=3) == (3, True)
    assert count_capped(items, cap=7) == (7, False)
    monkeypatch.setattr("judging.items.COUNT_CAP", 3)
    monkeypatch.setattr("judging.item_views.COUNT_CAP", 3)
    client.force_login(lead)
    # A first page that holds the whole list is its own count, exact whatever the cap.
    response = client.get(list_url(project))
    assert (response.context["count"], response.context["capped"]) == (7, False)
    monkeypatch.setattr("judging.items.PAGE_SIZE", 2)
    monkeypatch.setattr("judging.item_views.PAGE_SIZE", 2)
    page = client.get(list_url(project)).content.decode()
    assert "3 or more" in page and "count them all" in page
    if connection.vendor == "postgresql":  # and the planner's estimate beside it, said to be one
        assert "by PostgreSQL's planner estimate, which can be off" in page
    assert client.get(list_url(project, count="exact")).context["count"] == 7


# Bulk actions


def test_queue_the_ticked_items_for_smes_and_log_it(client, project, story, lead):
    client.force_login(lead)
    picked = [story["items"]["pending"].pk, story["items"]["judge-rej"].pk]
    response = client.post(
        reverse("judging:items_bulk", args=[project.slug]), {"action": "queue", "item": picked, "outcome": "pending"}
    )
    assert response.status_code == 302 and "outcome=pending" in response["Location"]
    # Only the ticked items the filter still matches: judge-rej is not pending.
    assert list(Item.objects.filter(in_sme_queue()).values_list("external_id", flat=True)) == ["pending"]
    action = ItemBulkAction.objects.get()
    assert (action.action, action.matched, action.queued, action.created_by) == ("queue", 1, 1, lead)
    assert action.filters == {"outcome": "pending"} and action.item_ids == picked
    assert story["items"]["pending"].slots.count() == project.reviews_per_item


def test_queue_every_filtered_item(client, project, story, lead):
    client.force_login(lead)
    client.post(reverse("judging:items_bulk", args=[project.slug]), {"action": "queue", "scope": "filtered",
                                                                     "basis": "judge"})  # fmt: skip
    assert set(Item.objects.filter(in_sme_queue()).values_list("external_id", flat=True)) == {
        "hostile", "vetoed", "judge-rej", "judge-acc",
    }  # fmt: skip
    page = client.get(list_url(project)).content.decode()
    assert "Recent bulk actions" in page and "basis=judge" in page


def test_nothing_ticked_is_refused_and_nothing_logged(client, project, story, lead):
    client.force_login(lead)
    response = client.post(reverse("judging:items_bulk", args=[project.slug]), {"action": "queue"}, follow=True)
    assert "Nothing done: tick some items" in response.content.decode()
    assert not ItemBulkAction.objects.exists()


def test_an_audit_sample_of_a_filtered_slice_draws_only_its_accepted_items(client, project, story, lead):
    client.force_login(lead)
    client.post(reverse("judging:items_bulk", args=[project.slug]),
                {"action": "audit", "scope": "filtered", "source_model": "big", "size": "5", "seed": "3"})  # fmt: skip
    action = ItemBulkAction.objects.get()
    assert (action.population, action.queued, action.size, action.seed, action.draw) == (1, 1, 5, 3, None)
    assert list(Item.objects.filter(in_sme_queue()).values_list("external_id", flat=True)) == ["judge-acc"]
    assert not SampleDraw.objects.exists()  # a slice is not a recorded design


def test_an_audit_sample_of_everything_is_a_recorded_audit_draw(client, project, story, lead):
    client.force_login(lead)
    client.post(
        reverse("judging:items_bulk", args=[project.slug]),
        {"action": "audit", "scope": "filtered", "size": "2", "seed": "1"},
    )
    action = ItemBulkAction.objects.get()
    draw = SampleDraw.objects.get()
    assert action.draw == draw and draw.design == "audit" and draw.drawn == 2 and draw.population == 3
    assert draw.members.count() == 2 and action.queued == 2


# The item page


def item_page(client, item) -> str:
    response = client.get(reverse("judging:item_detail", args=[item.project.slug, item.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_the_item_page_says_why_it_was_rejected_and_who_reviewed_it(client, project, story, lead, sme):
    client.force_login(lead)
    html = item_page(client, story["items"]["sme-rej"])
    assert "It rests on SME ground truth: reject, from the SME review of sme." in html
    assert "inaccurate" in html and "Edit" in html  # the review and its history
    html = item_page(client, story["items"]["vetoed"])
    assert "Vetoed by competitor (v0): competitor." in html
    assert "which said accept" in html and "judge-405b" in html
    html = item_page(client, story["items"]["judge-rej"])
    assert "tier 1 of the gating policy, run" in html and "The judge says reject" in html
    html = item_page(client, story["items"]["pending"])
    assert "Pending: no SME ground truth" in html and "In no training set." in html


def test_the_item_page_lists_the_training_sets_it_is_in(client, project, story, lead):
    item = story["items"]["judge-acc"]
    snapshot = TrainingSet.objects.create(project=project, name="first cut", status="ready")
    TrainingSetRow.objects.create(
        training_set=snapshot,
        split="validation",
        content_sha256="0" * 64,
        item=item,
        external_id="judge-acc",
        line="{}",
    )
    client.force_login(lead)
    html = item_page(client, item)
    assert f"Training set {snapshot.pk}: first cut" in html and "validation" in html


def test_untrusted_text_stays_text_on_the_list_and_the_item_page(client, project, story, lead):
    client.force_login(lead)
    for html in (
        client.get(list_url(project)).content.decode(),
        item_page(client, story["items"]["hostile"]),
    ):
        assert HOSTILE not in html
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


def test_the_funnel_links_into_the_list_and_the_run_page_to_the_item_page(client, project, story, lead):
    client.force_login(lead)
    funnel = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    items_url = list_url(project)
    for query in ("?outcome=accept", "?outcome=reject", "?outcome=pending", "?basis=sme", "?basis=rule"):
        assert f'href="{items_url}{query}"' in funnel
    # The accepted number is the list's count for its link.
    assert client.get(items_url + "?outcome=accept").context["count"] == 3
    # A disagreement with the SMEs on the run page opens the item page, not the admin.
    run = story["run"]
    Verdict.objects.create(run=run, item=story["items"]["sme-rej"], verdict="accept", rationale="looks fine")
    run_page = client.get(run.get_absolute_url()).content.decode()
    item = story["items"]["sme-rej"]
    assert reverse("judging:item_detail", args=[project.slug, item.pk]) in run_page
    assert "/admin/annotations/item/" not in run_page


def test_search_takes_words_phrases_and_exclusions(project, story):
    def search(q):
        return sorted(i.external_id for i in items_filtered(project, {"q": q}, None))

    assert search("competitorco") == ["vetoed"]
    assert search("costs") == ["sme-acc", "sme-rej"]
    assert search("judge-rej") == ["judge-rej"]  # an external id, also on PostgreSQL

    if connection.vendor == "postgresql":  # websearch syntax; SQLite's icontains takes the text as it is
        assert search('"costs $4"') == ["sme-acc"]
        assert search("costs -40") == ["sme-acc"]
