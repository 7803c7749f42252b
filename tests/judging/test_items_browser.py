"""The items list and the item page in a real browser, keyboard first: a lead follows the funnel into the list,
filters, sorts, searches, pages, ticks items and queues them for SMEs, opens an item and reads why it was decided
and who reviewed it; hostile text in an item stays text.

Headless Debian Chromium driven by Playwright against pytest-django's ``live_server``.
"""

import pytest
from playwright.sync_api import expect

from annotations.models import Item
from annotations.queue import in_sme_queue
from judging.models import ItemBulkAction
from judging.services import gate_apply
from tests.browser import log_in
from tests.judging.test_items_list import HOSTILE, build_story

pytestmark = pytest.mark.browser


@pytest.fixture
def story(project, sme, lead):
    built = build_story(project, sme)
    # 60 more pending items, so the pending filter has two pages.
    Item.objects.bulk_create(
        Item(project=project, external_id=f"p{i:03d}", prompt=f"Open question {i}?", response="Unsure.")
        for i in range(60)
    )
    gate_apply(project=project)
    return built


def rows(page):
    return page.locator("#items-table tbody tr[data-href]")


def test_a_lead_follows_the_funnel_filters_sorts_searches_and_pages(live_server, page, project, story):
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    page.locator("ol.funnel li.accepted a.n").click()
    expect(page).to_have_url(f"{live_server.url}/projects/{project.slug}/items/?outcome=accept")
    expect(rows(page)).to_have_count(3)
    expect(page.locator("p.count")).to_contain_text("3 items match the filter")

    # Filters apply as soon as a list changes (htmx swaps the results in and keeps the URL).
    page.get_by_label("Outcome").select_option("pending")
    expect(page.locator("p.count")).to_contain_text("61 items match the filter")
    expect(page).to_have_url(f"{live_server.url}/projects/{project.slug}/items/?outcome=pending")
    expect(rows(page)).to_have_count(50)
    expect(rows(page).first).to_contain_text("p059")  # newest first

    # n and p page by keyboard, through the keyset links.
    page.keyboard.press("n")
    expect(rows(page)).to_have_count(11)
    expect(rows(page).last).to_contain_text("pending")
    page.keyboard.press("p")
    expect(rows(page)).to_have_count(50)
    expect(rows(page).first).to_contain_text("p059")

    page.get_by_label("Sort").select_option("external_id")
    expect(rows(page).first).to_contain_text("p000")

    # / goes to the search box; Enter searches.
    page.get_by_label("Outcome").select_option("")
    page.keyboard.press("/")
    expect(page.locator("#item-search")).to_be_focused()
    page.keyboard.type("CompetitorCo")
    page.keyboard.press("Enter")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("vetoed")
    expect(rows(page).first).to_contain_text("competitor")  # its rule hit

    # The verdict and confidence filters read the gating run.
    page.locator("#item-search").fill("")
    page.get_by_label("Verdict").select_option("accept")
    page.get_by_label("P(accept) from").fill("0.9")
    page.get_by_role("button", name="Filter").click()
    expect(rows(page)).to_have_count(2)
    expect(page.locator("#items-table")).to_contain_text("0.950")


def test_a_lead_ticks_items_by_keyboard_and_queues_them_for_smes(live_server, page, project, story, lead):
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/items/?outcome=reject")
    expect(rows(page)).to_have_count(3)
    page.keyboard.press("j")
    expect(rows(page).nth(0)).to_have_class("current")
    page.keyboard.press("x")
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("x")
    expect(page.locator("#items-table tbody input[name=item]:checked")).to_have_count(2)
    page.get_by_role("button", name="Queue for SMEs").click()
    expect(page.locator(".message")).to_contain_text("Queued 2 of 2 items for SME review")
    expect(page).to_have_url(f"{live_server.url}/projects/{project.slug}/items/?outcome=reject")
    queued = set(Item.objects.filter(in_sme_queue()).values_list("external_id", flat=True))
    assert queued == {"vetoed", "sme-rej"}  # the first and third rows, newest first
    action = ItemBulkAction.objects.get()
    assert (action.created_by, action.filters, action.queued) == (lead, {"outcome": "reject"}, 2)
    expect(page.locator("section#results")).to_contain_text("Recent bulk actions")

    # Every filtered item at once, with the header's box as the alternative for a page.
    page.get_by_label("Tick every item on this page").check()
    expect(page.locator("#items-table tbody input[name=item]:checked")).to_have_count(3)
    page.get_by_label("all 3 filtered items").check()
    page.get_by_role("button", name="Queue for SMEs").click()
    expect(page.locator(".message")).to_contain_text("Queued 1 of 3 items")


def test_enter_opens_the_item_page_which_says_why_and_who(live_server, page, project, story):
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/items/?basis=sme")
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Item sme-rej")
    why = page.locator("section#why")
    expect(why).to_contain_text("Outcome: reject.")
    expect(why).to_contain_text("It rests on SME ground truth: reject, from the SME review of sme.")
    reviews = page.locator("section#reviews")
    expect(reviews).to_contain_text("inaccurate")
    expect(reviews.locator("h3", has_text="History")).to_be_visible()
    page.get_by_role("link", name="← Items").click()
    expect(page).to_have_url(f"{live_server.url}/projects/{project.slug}/items/?basis=sme")

    page.goto(f"{live_server.url}/projects/{project.slug}/items/?basis=rule")
    page.locator("a.item-link").first.click()
    expect(page.locator("section#why")).to_contain_text("Vetoed by competitor (v0): competitor.")
    expect(page.locator("section#rules")).to_contain_text("v0")
    expect(page.locator("section#verdicts")).to_contain_text("The judge says accept")


def test_hostile_text_stays_text_in_the_browser(live_server, page, project, story):
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/items/?q=hostile")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text('<script>alert("x")</script>')
    rows(page).first.locator("a.item-link").click()
    expect(page.locator("#response")).to_have_text(HOSTILE)
    assert page.locator("#response script, #response img").count() == 0
    assert dialogs == []
