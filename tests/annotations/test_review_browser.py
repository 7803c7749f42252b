"""The review screen in a real browser: keyboard review over htmx, escaping, access.

Headless Debian Chromium driven by Playwright's sync API against pytest-django's
``live_server`` (a real HTTP server on a transactional test database). The SME
logs in through the real login form, as a person would.
"""

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from annotations.models import Review, ReviewChange
from tests.browser import log_in
from tests.conftest import make_items, queue_all
from tests.services import require

pytestmark = pytest.mark.browser


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
    """Keys alone decide, pick reasons, skip and undo, in place; the database ends as the SME meant.

    Items r0..r4: ``a`` accepts r0; ``2`` ``r`` rejects r1 as "incomplete";
    ``s`` skips r2; ``a`` accepts r3; ``u`` undoes that and r3 comes back;
    ``4`` ``r`` rejects it as "tone"; a comment typed after ``c`` keeps its
    letters (``a`` in the text box does not accept), Esc leaves the box, and
    ``a`` accepts r4. No key causes a full page load.
    """
    require("chromium")
    responses = ["Refunds take 5 days.", "Shipping is free.", "Call us anytime.", "We never close.", "Use the app."]
    make_items(project, responses)
    queue_all(project)

    log_in(page, live_server, "sme", "sme-pass-123")
    page.goto(review_url(live_server))
    card = page.locator("#review-card")
    expect_card_ready(page, responses[0])
    expect(card).to_contain_text("0 of 5 reviews done")
    page.evaluate("window.__marker = 1")

    def keys(*presses, then):
        for key in presses:
            page.keyboard.press(key)
        expect_card_ready(page, then)
        expect_same_document(page)

    keys("a", then=responses[1])
    keys("2", "r", then=responses[2])
    keys("s", then=responses[3])
    keys("a", then=responses[4])
    keys("u", then=responses[3])
    expect(card).to_contain_text("2 of 5 reviews done")
    keys("4", "r", then=responses[4])
    page.keyboard.press("c")
    page.keyboard.type("a fine answer")
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    expect(card.locator(".done")).to_contain_text("Nothing left for you to review")
    expect_same_document(page)

    page.keyboard.press("?")
    expect(page.locator("dialog#keys")).to_be_visible()
    page.keyboard.press("Escape")

    reviews = Review.objects.filter(item__project=project).order_by("item__external_id")
    assert [(r.item.external_id, r.decision, r.reason, r.comment) for r in reviews] == [
        ("r0", "accept", "", ""),
        ("r1", "reject", "incomplete", ""),
        ("r3", "reject", "tone", ""),
        ("r4", "accept", "", "a fine answer"),
    ]
    assert {r.reviewer_id for r in reviews} == {sme.pk} and {r.origin for r in reviews} == {Review.Origin.UI}
    assert list(ReviewChange.objects.filter(action="undo").values_list("item__external_id", flat=True)) == ["r3"]


def test_a_decision_in_a_second_tab_on_an_item_the_first_decided_says_so_on_a_working_card(
    live_server, page, project, sme
):
    """One SME, two tabs on the same item: tab 1 accepts it; tab 2's reject is refused (409) with the reason.

    Tab 2 shows "you already decided" and, in place, the SME's current item
    (the one tab 1 moved on to); its keys work, and nothing tab 1 stored is lost.
    """
    require("chromium")
    responses = ["Refunds take 5 days.", "Shipping is free.", "Call us anytime."]
    make_items(project, responses)
    queue_all(project)
    log_in(page, live_server, "sme", "sme-pass-123")
    tab_1, tab_2 = page, page.context.new_page()
    for tab in (tab_1, tab_2):
        tab.goto(review_url(live_server))
        expect_card_ready(tab, responses[0])
        tab.evaluate("window.__marker = 1")

    tab_1.keyboard.press("a")
    expect_card_ready(tab_1, responses[1])
    tab_2.keyboard.press("4")  # a reason first (none is picked for the SME), then r sends the reject
    with tab_2.expect_response(lambda r: r.request.method == "POST") as answer:
        tab_2.keyboard.press("r")
    assert answer.value.status == 409
    alert = tab_2.locator("#review-card .error")
    expect(alert).to_contain_text("You already decided on r0 (accept), in another tab or window")
    expect_card_ready(tab_2, responses[1])
    expect_same_document(tab_2)
    assert list(Review.objects.values_list("item__external_id", "decision")) == [("r0", "accept")]

    tab_2.keyboard.press("a")  # the card tab 2 was given works
    expect_card_ready(tab_2, responses[2])
    expect(tab_2.locator("#review-card .error")).to_have_count(0)
    expect_same_document(tab_2)
    reviews = Review.objects.order_by("item__external_id").values_list("item__external_id", "decision")
    assert list(reviews) == [("r0", "accept"), ("r1", "accept")]


def test_a_response_with_an_xss_payload_is_shown_not_run(live_server, page, project):
    """Markup in the prompt and response is escaped: shown as text, never run; Markdown still renders."""
    require("chromium")
    payload = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2"> [link](javascript:window.__xss=3)'
    make_items(project, [payload + "\n\n- **bold** item"], prompt="<b>bold?</b>")
    queue_all(project)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    log_in(page, live_server, "sme", "sme-pass-123")
    page.goto(review_url(live_server))

    card = page.locator("#review-card")
    expect(card.locator(".response")).to_contain_text("<script>window.__xss=1</script>")
    expect(card.locator(".response li strong")).to_have_text("bold")
    expect(card).to_contain_text("<b>bold?</b>")
    expect(card.locator(".fields script, .fields img, .fields b, .fields a[href^=javascript]")).to_have_count(0)
    card.locator(".response").click()
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert dialogs == []


def test_long_rtl_and_emoji_text_display(live_server, page, project):
    """A 100 KB response, right-to-left text and emoji are shown whole and readable."""
    require("chromium")
    long_text = "word " * 20_000 + "THE END"
    make_items(project, [long_text, "مرحبا بكم في الدعم 😊👍"])
    queue_all(project)
    log_in(page, live_server, "sme", "sme-pass-123")
    page.goto(review_url(live_server))
    expect(page.locator("#review-card .response")).to_contain_text("THE END")
    page.keyboard.press("a")
    response = page.locator("#review-card .response")
    expect(response).to_have_text("مرحبا بكم في الدعم 😊👍")
    assert response.evaluate("el => getComputedStyle(el.querySelector('p')).direction") == "rtl"


def test_an_outsider_gets_a_404_on_the_review_page(live_server, page, project, outsider):
    """A logged-in user who is not a member sees a plain 404, nothing of the project."""
    require("chromium")
    log_in(page, live_server, "outsider", "outsider-pass-123")

    response = page.goto(review_url(live_server))

    assert response is not None and response.status == 404
    expect(page.locator("body")).not_to_contain_text(project.name)
