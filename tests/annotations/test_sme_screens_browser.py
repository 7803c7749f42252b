"""The SME screens of issue 14 in a real browser: reasons, correction, undo, context, sticky bar, legend, agreement
and adjudication.

Headless Debian Chromium driven by Playwright against pytest-django's ``live_server``; people log in through the
real login form and work with the keyboard, as the legend tells them. The sticky-bar tests use a 1366x900 viewport.
"""

import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from playwright.sync_api import Page, expect

from annotations.models import Adjudication, Review
from tests.annotations.test_review_browser import expect_card_ready, expect_same_document, review_url
from tests.browser import log_in
from tests.conftest import make_items, queue_all
from tests.services import require

pytestmark = pytest.mark.browser

LAPTOP = {"width": 1366, "height": 900}


def start(page: Page, live_server, project, responses: list[str], **fields) -> list:
    """Queue items with ``responses``, log the SME in, open the review screen on the first item."""
    require("chromium")
    items = make_items(project, responses)
    if fields:
        project.items.update(**fields)
    queue_all(project)
    log_in(page, live_server, "sme", "sme-pass-123")
    page.goto(review_url(live_server))
    expect_card_ready(page, responses[0])
    page.evaluate("window.__marker = 1")
    return items


def posts(page: Page) -> list[str]:
    """The URLs of the POSTs the page sends from now on (a live list)."""
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)
    return sent


def write(page: Page, key: str, text: str, *, at_end: bool = False) -> None:
    """Press ``key`` (it focuses a text box), type ``text`` (after what the box holds, with ``at_end``), leave
    the box with Esc."""
    page.keyboard.press(key)
    if at_end:
        page.keyboard.press("Control+End")
    page.keyboard.type(text)
    page.keyboard.press("Escape")


def stored():
    return list(
        Review.objects.order_by("item__external_id").values_list(
            "item__external_id", "decision", "reason", "comment", "corrected_response"
        )
    )


def test_no_reason_is_picked_and_reject_asks_for_one_before_or_after_r(live_server, page, project, sme):
    """``r`` alone sends nothing and asks why; a digit then rejects with that reason. A digit before ``r``
    works too; ``0`` takes the SME's own words, and Enter in that box rejects (it does not accept). A click on
    Reject without a reason asks too; Esc cancels a waiting reject, and ``a`` still accepts."""
    responses = ["Refunds take 5 days.", "Shipping is free.", "Call us anytime.", "We never close.", "Use the app."]
    start(page, live_server, project, responses)
    card = page.locator("#review-card")
    expect(card.locator('input[name="reason"]:checked')).to_have_count(0)
    sent = posts(page)
    prompt = card.locator(".reject-prompt")

    page.keyboard.press("r")
    expect(prompt).to_be_visible()
    expect(prompt).to_contain_text("Press a reason's digit (1\N{EN DASH}4), or 0 for other")
    assert sent == [] and not Review.objects.exists()
    page.keyboard.press("3")  # after r: rejects at once
    expect_card_ready(page, responses[1])

    page.keyboard.press("2")  # before r: picks, r sends
    expect(card.locator('input[value="incomplete"]')).to_be_checked()
    expect(prompt).to_be_hidden()
    page.keyboard.press("r")
    expect_card_ready(page, responses[2])

    page.keyboard.press("r")
    page.keyboard.press("0")  # other: the box takes the words, Enter rejects
    expect(card.locator('input[name="reason_other"]')).to_be_focused()
    page.keyboard.press("Enter")  # no words yet: nothing sent, still asking
    expect(prompt).to_be_visible()
    page.keyboard.type("quotes a retired policy")
    page.keyboard.press("Enter")
    expect_card_ready(page, responses[3])

    card.get_by_role("button", name="Reject").click()
    expect(card.locator(".reject-prompt")).to_be_visible()
    page.keyboard.press("Escape")
    expect(card.locator(".reject-prompt")).to_be_hidden()
    page.keyboard.press("a")
    expect_card_ready(page, responses[4])
    card.locator('input[value="tone"]').click()  # a reason by mouse, then the button
    card.get_by_role("button", name="Reject").click()
    expect(card.locator(".done")).to_contain_text("Nothing left for you to review")
    expect_same_document(page)

    assert [(r[0], r[1], r[2]) for r in stored()] == [
        ("r0", "reject", "policy"),
        ("r1", "reject", "incomplete"),
        ("r2", "reject", "other: quotes a retired policy"),
        ("r3", "accept", ""),
        ("r4", "reject", "tone"),
    ]
    assert len(sent) == 5  # one POST per decision: no reasonless reject went out


def test_e_opens_the_correction_box_holding_the_original_response(live_server, page, project, sme):
    """``e`` opens the box, focused, with the response in it; an edit is stored, an untouched box is not."""
    responses = ["Refunds take 5 days.", "Shipping is free."]
    start(page, live_server, project, responses)
    box = page.locator('#review-card textarea[name="corrected_response"]')
    expect(box).to_be_hidden()
    page.keyboard.press("e")
    expect(box).to_be_visible()
    expect(box).to_be_focused()
    expect(box).to_have_value("Refunds take 5 days.")
    page.keyboard.press("Control+End")
    page.keyboard.type(" Business days.")
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    expect_card_ready(page, responses[1])
    page.keyboard.press("e")  # opened, left as it is: no correction
    expect(box).to_have_value("Shipping is free.")
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    expect(page.locator("#review-card .done")).to_be_visible()
    assert [(r[0], r[4]) for r in stored()] == [("r0", "Refunds take 5 days. Business days."), ("r1", "")]


def test_undo_goes_back_several_decisions_restoring_reason_comment_and_correction(live_server, page, project, sme):
    """Three decisions with reasons, comments and a correction; ``u`` three times brings each back, newest first,
    as it was entered; the session count follows; ``r`` then rejects with the restored reason."""
    responses = ["Refunds take 5 days.", "Shipping is free.", "Call us anytime.", "We never close."]
    start(page, live_server, project, responses)
    card = page.locator("#review-card")
    count = card.locator(".session-count")
    expect(count).to_have_text("This session: 0 decisions")

    page.keyboard.press("2")
    write(page, "c", "misses the fee")
    write(page, "e", " A fee applies.", at_end=True)
    page.keyboard.press("r")
    expect_card_ready(page, responses[1])
    write(page, "0", "wrong region")
    write(page, "c", "EU only")
    page.keyboard.press("r")
    expect_card_ready(page, responses[2])
    write(page, "c", "good")
    page.keyboard.press("a")
    expect_card_ready(page, responses[3])
    expect(count).to_have_text("This session: 3 decisions")

    page.keyboard.press("u")
    expect_card_ready(page, responses[2])
    expect(card.locator('textarea[name="comment"]')).to_have_value("good")
    expect(card.locator(".restored")).to_contain_text("Back as you left it: accept")
    expect(count).to_have_text("This session: 2 decisions")
    page.keyboard.press("u")
    expect_card_ready(page, responses[1])
    expect(card.locator('input[name="reason"][value="_other"]')).to_be_checked()
    expect(card.locator('input[name="reason_other"]')).to_have_value("wrong region")
    expect(card.locator('textarea[name="comment"]')).to_have_value("EU only")
    page.keyboard.press("u")
    expect_card_ready(page, responses[0])
    expect(card.locator('input[value="incomplete"]')).to_be_checked()
    expect(card.locator('textarea[name="comment"]')).to_have_value("misses the fee")
    expect(card.locator("details.correction")).to_have_attribute("open", "")
    expect(card.locator('textarea[name="corrected_response"]')).to_have_value("Refunds take 5 days. A fee applies.")
    expect(count).to_have_text("This session: 0 decisions")
    expect(card.locator('button[data-key="u"]')).to_have_count(0)
    assert not Review.objects.exists()

    page.keyboard.press("r")  # the restored reason is picked: r rejects at once
    expect_card_ready(page, responses[1])  # the undone items went back to the queue, in queue order
    expect_same_document(page)
    assert stored() == [("r0", "reject", "incomplete", "misses the fee", "Refunds take 5 days. A fee applies.")]


def test_x_opens_and_closes_a_long_context(live_server, page, project, sme):
    passage = "The refund policy, section 4. " * 100  # 3,000 characters: shown closed
    start(page, live_server, project, ["Refunds take 5 days."], context=passage)
    context = page.locator("#review-card details.context")
    expect(context).not_to_have_attribute("open", "")
    expect(context.locator(".text")).to_be_hidden()
    page.keyboard.press("x")
    expect(context.locator(".text")).to_be_visible()
    expect(context.locator(".text")).to_contain_text("section 4.")
    page.keyboard.press("x")
    expect(context.locator(".text")).to_be_hidden()


def expect_on_screen(page: Page, selector: str) -> None:
    """The element is inside the viewport and is what a click at its centre hits (nothing covers it)."""
    box = page.locator(selector).bounding_box()
    height = page.viewport_size["height"]
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height, (selector, box, height)
    hit = page.evaluate(
        "([x, y, s]) => { const el = document.elementFromPoint(x, y); return !!(el && el.closest(s)); }",
        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, selector],
    )
    assert hit, f"{selector} is covered"


def test_the_action_bar_stays_on_screen_at_1366x900_for_a_very_long_item(live_server, page, project, sme):
    """A long prompt, a long open context and a 100 KB answer: at 1366x900 the buttons and reasons are on
    screen at the top, with the context opened, scrolled to the middle and to the end; a key still works."""
    page.set_viewport_size(LAPTOP)
    long_answer = "\n\n".join(f"Paragraph {i}: " + "the answer goes on. " * 40 for i in range(120))
    prompt = "\n\n".join(f"Question part {i}." for i in range(60))
    start(page, live_server, project, [long_answer, "Short."], prompt=prompt, context="Passage. " * 400)
    bar = ["#review-card button.accept", "#review-card button.reject", "#review-card fieldset.reasons"]
    for selector in bar:
        expect_on_screen(page, selector)
    page.keyboard.press("x")
    expect(page.locator("#review-card details.context .text")).to_be_visible()
    page.keyboard.press("e")
    page.keyboard.press("Escape")
    for scroll in ("document.body.scrollHeight / 2", "document.body.scrollHeight"):
        page.evaluate(f"window.scrollTo(0, {scroll})")
        for selector in bar:
            expect_on_screen(page, selector)
    page.evaluate("window.scrollTo(0, 0)")
    expect_on_screen(page, "#review-card button.accept")
    page.keyboard.press("a")
    expect_card_ready(page, "Short.")
    assert stored() == [("r0", "accept", "", "", "")]


def test_every_key_the_screen_answers_is_in_the_on_screen_legend(live_server, page, project, sme):
    """The legend on the card and the ? list name every key review.js answers to."""
    start(page, live_server, project, ["Refunds take 5 days.", "Shipping is free."])
    page.keyboard.press("a")
    expect_card_ready(page, "Shipping is free.")
    legend = page.locator("#review-card .key-legend")
    expect(legend).to_be_visible()
    shown = set(legend.locator("kbd").all_inner_texts())
    assert {"a", "r", "1", "4", "0", "e", "c", "x", "s", "u", "Esc", "?"} <= shown
    page.keyboard.press("?")
    listed = set(page.locator("dialog#keys kbd").all_inner_texts())
    assert {"a", "r", "1", "4", "0", "e", "c", "x", "s", "u", "Esc", "?", "Enter"} <= listed
    script = page.evaluate("fetch('/static/js/review.js').then(r => r.text())")
    answered = set(re.findall(r'event\.key === "([^"]+)"', script)) - {"Enter", "Escape"}
    assert answered <= shown, answered - shown


def test_the_other_reason_and_comments_are_escaped(live_server, page, project, sme):
    """An SME's own words come back (after undo) as text, never as markup."""
    start(page, live_server, project, ["Refunds take 5 days.", "Shipping is free."])
    payload = '"><img src=x onerror="window.__xss=1">'
    write(page, "0", payload)
    write(page, "c", "</textarea><script>window.__xss=2</script>")
    page.keyboard.press("r")
    expect_card_ready(page, "Shipping is free.")
    page.keyboard.press("u")
    expect_card_ready(page, "Refunds take 5 days.")
    card = page.locator("#review-card")
    expect(card.locator('input[name="reason_other"]')).to_have_value(payload)
    expect(card.locator('textarea[name="comment"]')).to_have_value("</textarea><script>window.__xss=2</script>")
    expect(card.locator("img, script")).to_have_count(0)
    assert page.evaluate("typeof window.__xss") == "undefined"


def disagreements(project, sme, responses: list[str], **fields) -> list:
    """Items on which the SME accepts and bob rejects ("tone", with a comment)."""
    bob = get_user_model().objects.create_user("bob")
    items = make_items(project, responses)
    if fields:
        project.items.update(**fields)
    for item in items:
        Review.objects.create(item=item, reviewer=sme, decision="accept")
        Review.objects.create(item=item, reviewer=bob, decision="reject", reason="tone", comment=f"{item} curt")
    return items


def adjudication_url(live_server, slug: str = "support") -> str:
    return live_server.url + reverse("annotations:adjudication", args=[slug])


def test_a_lead_adjudicates_one_item_at_a_time_with_the_keyboard_and_filters(live_server, page, project, sme, lead):
    """``n``/``p`` move, ``x`` opens the context, ``c`` writes a note, ``r``/``a`` decide and the next item
    comes; ``/`` searches the text; the SMEs' reviews are shown with each item; small n is flagged."""
    require("chromium")
    items = disagreements(
        project, sme, ["Refunds take 5 days.", "Shipping is free.", "Call us anytime."], context="Policy. " * 300
    )
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(adjudication_url(live_server))
    card = page.locator("#adjudication-card")
    expect(card).to_contain_text("Disagreement 1 of 3")
    expect(card.locator(".response")).to_have_text("Refunds take 5 days.")
    expect(card.locator("table.sme-reviews")).to_contain_text("r0 curt")
    expect(page.locator("#cohen-kappa")).to_contain_text("n=3: too few to mean anything")
    expect(page.locator("aside.key-legend")).to_be_visible()

    page.keyboard.press("n")
    expect(card.locator(".response")).to_have_text("Shipping is free.")
    page.keyboard.press("p")
    expect(card.locator(".response")).to_have_text("Refunds take 5 days.")
    page.keyboard.press("x")
    expect(card.locator("details.context .text")).to_be_visible()
    page.keyboard.press("c")
    page.keyboard.type("fee missing")
    page.keyboard.press("Enter")  # does not decide
    expect(card.locator(".response")).to_have_text("Refunds take 5 days.")
    page.keyboard.press("r")
    expect(page.locator("p.message")).to_contain_text("Adjudicated r0: reject.")
    expect(card.locator(".response")).to_have_text("Shipping is free.")
    expect(card).to_contain_text("Disagreement 1 of 2")

    page.keyboard.press("/")
    page.keyboard.type("anytime")
    page.keyboard.press("Enter")
    expect(card).to_contain_text("Disagreement 1 of 1 (filtered; 2 open in all)")
    expect(card.locator(".response")).to_have_text("Call us anytime.")
    page.keyboard.press("a")
    expect(page.locator("main")).to_contain_text("No open disagreement matches these filters (1 open in all)")
    decided = dict(Adjudication.objects.values_list("item__external_id", "decision"))
    assert decided == {"r0": "reject", "r2": "accept"}
    assert Adjudication.objects.get(item=items[0]).reason == "fee missing"


def test_the_adjudication_page_escapes_untrusted_text_and_lists_every_key(live_server, page, project, sme, lead):
    require("chromium")
    payload = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    disagreements(project, sme, [payload])
    Review.objects.filter(reason="tone").update(comment=payload)
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(adjudication_url(live_server))
    card = page.locator("#adjudication-card")
    expect(card.locator(".response")).to_contain_text("<script>window.__xss=2</script>")
    expect(card.locator("table.sme-reviews")).to_contain_text("<img src=x")
    expect(card.locator("img, script")).to_have_count(0)
    assert page.evaluate("typeof window.__xss") == "undefined"
    shown = set(page.locator("aside.key-legend kbd").all_inner_texts())
    script = page.evaluate("fetch('/static/js/adjudication.js').then(r => r.text())")
    answered = set(re.findall(r'event\.key === "([^"]+)"', script)) - {"Enter", "Escape"}
    assert answered and answered <= shown, answered - shown


def test_the_agreement_page_shows_n_intervals_and_flags_small_n(live_server, page, project, sme):
    require("chromium")
    disagreements(project, sme, ["Refunds take 5 days.", "Shipping is free."])
    log_in(page, live_server, "sme", "sme-pass-123")
    page.goto(live_server.url + reverse("annotations:agreement", args=["support"]))
    kappa = page.locator("#cohen-kappa")
    expect(kappa.locator(".small-n")).to_have_text("n=2: too few to mean anything")
    expect(page.locator("#krippendorff-alpha")).to_contain_text("n=2: too few to mean anything")
    expect(page.locator("table").last).to_contain_text("95 % interval")
