"""The review screen in a real browser: keyboard review over htmx, escaping, access.

Headless Debian Chromium driven by Playwright's sync API against pytest-django's
``live_server`` (a real HTTP server on a transactional test database). The SME
logs in through the real login form, as a person would.
"""

import os

import pytest
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect, sync_playwright

from annotations.models import Item, Review
from tests.conftest import make_items
from tests.services import require

# Playwright's sync API runs an event loop in this thread; without this Django
# refuses ORM calls made from the test body (SynchronousOnlyOperation).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Browser:
    """One headless Chromium for the module, closed (with Playwright) at the end."""
    require("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Page:
    """A fresh browser context (no cookies) and page per test."""
    context = browser.new_context()
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def log_in(page: Page, live_server, username: str, password: str) -> None:
    """Log in through the real form at /login/ and wait for the redirect to the project list."""
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(live_server.url + reverse("annotations:project_list"))


def review_url(live_server, slug: str = "support") -> str:
    return live_server.url + reverse("annotations:review", args=[slug])


def expect_card_ready(page: Page, response: str) -> None:
    """Wait until the card shows ``response``, and no longer.

    htmx wires up a swapped-in form only in its settle step ~20 ms later; the
    next key is pressed at once on purpose, since review.js must cope (a key
    that went to an unwired form would be a full page load, which
    ``expect_same_document`` catches).
    """
    expect(page.locator("#review-card .response")).to_have_text(response)


def expect_same_document(page: Page) -> None:
    """The marker set on the first load is still there: no full page load happened."""
    assert page.evaluate("window.__marker") == 1


def test_an_sme_reviews_with_the_keyboard_without_full_page_loads(live_server, page, project, sme):
    """``a``/``r`` decide the shown item in place; the reviews land in the database as given.

    Three items go by keyboard alone (accept, reject with the default reason,
    accept); on the fourth the SME picks "tone" in the select first, which must
    not swallow the following ``r``.
    """
    require("chromium")
    responses = ["Refunds take 5 days.", "Shipping is free.", "Call us anytime.", "We never close."]
    make_items(project, responses)
    Item.objects.filter(project=project).update(in_sme_queue=True)

    log_in(page, live_server, "sme", "sme-pass-123")
    page.goto(review_url(live_server))
    expect_card_ready(page, responses[0])
    expect(page.locator("#review-card")).to_contain_text("0 of 4 queued items reviewed")
    page.evaluate("window.__marker = 1")

    for i, key in enumerate(["a", "r", "a"]):
        page.keyboard.press(key)
        expect_card_ready(page, responses[i + 1])
        expect(page.locator("#review-card")).to_contain_text(f"{i + 1} of 4 queued items reviewed")
        expect_same_document(page)

    select = page.locator("#review-card select[name=reason]")
    select.focus()
    select.select_option("tone")
    # review.js blurs the select on change so that the next key reaches the page.
    assert page.evaluate("document.activeElement === document.body")
    page.keyboard.press("r")
    expect(page.locator("#review-card .done")).to_have_text("Nothing left to review in this project. Thank you!")
    expect(page.locator("#review-card")).to_contain_text("4 of 4 queued items reviewed")
    expect_same_document(page)

    reviews = Review.objects.filter(item__project=project).order_by("item__external_id")
    assert [(r.item.external_id, r.decision, r.reason) for r in reviews] == [
        ("r0", "accept", ""),
        ("r1", "reject", "inaccurate"),
        ("r2", "accept", ""),
        ("r3", "reject", "tone"),
    ]
    assert {r.reviewer_id for r in reviews} == {sme.pk}
    assert {r.origin for r in reviews} == {Review.Origin.UI}


def test_a_response_with_an_xss_payload_is_shown_not_run(live_server, page, project):
    """Markup in the prompt and response is escaped: shown as text, never run or rendered."""
    require("chromium")
    payload = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
    make_items(project, [payload], prompt="<b>bold?</b>")
    Item.objects.filter(project=project).update(in_sme_queue=True)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    log_in(page, live_server, "sme", "sme-pass-123")
    page.goto(review_url(live_server))

    card = page.locator("#review-card")
    expect(card.locator(".response")).to_have_text(payload)
    expect(page.locator("body")).to_contain_text("<script>window.__xss=1</script>")
    expect(card).to_contain_text("<b>bold?</b>")
    expect(card.locator("script, img, b")).to_have_count(0)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert dialogs == []


def test_an_outsider_gets_a_404_on_the_review_page(live_server, page, project, outsider):
    """A logged-in user who is not a member sees a plain 404, nothing of the project."""
    require("chromium")
    log_in(page, live_server, "outsider", "outsider-pass-123")

    response = page.goto(review_url(live_server))

    assert response is not None and response.status == 404
    expect(page.locator("body")).not_to_contain_text(project.name)
