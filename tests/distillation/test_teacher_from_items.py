"""The items list's "Send to the teacher": a lead sends the ticked items, or every filtered item after confirming
the count, to a teacher run whose answers the gating policy judges when done; leads and staff only, POST with
CSRF. In a real browser (Playwright, Debian Chromium) and through the test client."""

import pytest
from django.test import Client
from django.urls import reverse
from playwright.sync_api import expect

from annotations.models import Item
from distillation.models import TeacherRun
from judging.services import gate_apply
from tests.browser import log_in
from tests.conftest import make_items
from tests.distillation.test_teacher_runs import use_teacher


@pytest.mark.browser
def test_a_lead_sends_ticked_then_all_filtered_items_to_the_teacher(live_server, page, project, lead, judge_server):
    use_teacher(project, judge_server.base_url)
    make_items(project, ["a", "b", "c"])
    gate_apply(project=project)
    log_in(page, live_server, "lead", "lead-pass-123")
    items_url = f"{live_server.url}/projects/{project.slug}/items/"
    page.goto(items_url)
    boxes = page.locator("#items-table tbody input[name=item]")
    expect(boxes).to_have_count(3)
    boxes.nth(0).check()  # newest first: r2
    boxes.nth(2).check()  # r0
    page.get_by_role("button", name="Send to the teacher").click()
    expect(page.locator(".message")).to_contain_text("started over 2 items")
    expect(page).to_have_url(items_url)
    run = TeacherRun.objects.get()
    ticked = sorted(Item.objects.filter(external_id__in=["r0", "r2"]).values_list("id", flat=True))
    assert (run.selection, run.config["item_ids"], run.judge_answers, run.created_by) == ("items", ticked, True, lead)
    assert run.answers_written == 2

    # Every filtered item: the 3 originals (the 2 answers now listed too are not sent again), count confirmed.
    page.goto(items_url)
    page.get_by_label("all 5 filtered items").check()
    page.get_by_role("button", name="Send to the teacher").click()
    expect(page.locator("h1")).to_have_text("Send 3 items to the teacher?")
    assert TeacherRun.objects.count() == 1  # nothing is sent before the count is confirmed
    page.get_by_test_id("confirm-teacher").click()
    expect(page.locator(".message")).to_contain_text("started over 3 items")
    latest = TeacherRun.objects.first()
    assert latest.items_total == 3 and sorted(latest.config["item_ids"]) == sorted(
        Item.objects.filter(answers__isnull=True).values_list("id", flat=True)
    )


@pytest.mark.django_db
def test_only_leads_send_items_by_post_with_csrf(project, lead, sme, outsider, judge_server):
    use_teacher(project, judge_server.base_url)
    (item,) = make_items(project, ["a"])
    url = reverse("distillation:teacher_run_from_items", args=[project.slug])
    client = Client()
    for user, code in ((outsider, 404), (sme, 403)):
        client.force_login(user)
        assert client.post(url, {"item": item.pk}).status_code == code
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(lead)
    assert strict.post(url, {"item": item.pk}).status_code == 403  # no CSRF token
    assert strict.get(url).status_code == 405
    assert not TeacherRun.objects.exists()
    lead_client = Client()
    lead_client.force_login(lead)
    response = lead_client.post(url, {"scope": "filtered", "confirm": "7"}, follow=True)
    assert "Send 1 item to the teacher?" in response.content.decode()  # a stale count is confirmed again
    response = lead_client.post(url, {"item": "x"}, follow=True)
    assert "Nothing sent to the teacher" in response.content.decode() and not TeacherRun.objects.exists()
