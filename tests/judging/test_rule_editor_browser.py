"""The rule editor in a real browser (headless Debian Chromium driven by Playwright against pytest-django's
``live_server``): a lead who is not staff writes a keyword rule and watches the dry run count and show examples
as they type, saves by keyboard only, sees a bad regex named live, edits and deactivates a rule. Item text with
markup in it stays text."""

import pytest
from playwright.sync_api import expect

from annotations.models import Item, Review
from judging.models import LabelFunction, LabelFunctionVersion
from tests.browser import log_in
from tests.conftest import make_items
from tests.judging.test_project_settings_browser import tab_to

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__larry_xss = 1"> Dropbox'
RESPONSES = ["Switch to Dropbox.", "Plus is $4 a month.", "Dropbox and OneDrive are better.", "Try OneDrive.", HOSTILE]


@pytest.fixture
def items(project, lead):
    items = make_items(project, RESPONSES)
    Review.objects.create(item=items[0], decision="accept", origin="import")
    Review.objects.create(item=items[2], decision="reject", origin="import")
    return items


def status(page):
    return page.locator("#dry-run-status")


def test_a_lead_writes_a_keyword_rule_watching_the_dry_run_and_saves_by_keyboard(live_server, page, project, items):
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/rules/")
    new = page.get_by_role("link", name="New rule")
    new.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="New rule")).to_be_visible()
    expect(page.get_by_label("Kind")).to_have_value("keywords")
    expect(page.get_by_label("pattern")).to_be_hidden()  # only the chosen kind's parameters show

    page.get_by_label("Name").focus()
    page.keyboard.type("competitor")
    page.keyboard.press("Tab")
    page.keyboard.type("names a competitor")
    page.get_by_label("keywords").focus()
    page.keyboard.type("Dropbox")
    expect(status(page)).to_have_text("Would reject 3 of all 5 items.")
    examples = page.locator("#dry-run-examples li")
    expect(examples).to_have_count(3)
    expect(examples.first.locator("mark")).to_have_text("Dropbox")
    expect(examples.first.get_by_role("link")).to_have_attribute(
        "href", f"/projects/{project.slug}/items/{items[0].pk}/"
    )
    expect(page.locator("#dry-run-sme")).to_contain_text("SMEs accepted 1 and rejected 1 (n = 2)")
    expect(examples.nth(2)).to_contain_text(HOSTILE)  # the hostile response is text
    assert page.evaluate("window.__larry_xss") is None

    page.keyboard.press("Enter")
    page.keyboard.type("OneDrive")
    expect(status(page)).to_have_text("Would reject 4 of all 5 items.")

    tab_to(page, page.get_by_role("button", name="Save rule"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{live_server.url}/projects/{project.slug}/rules/")
    expect(page.locator(".message")).to_contain_text("Rule 'competitor' saved as version 1. Re-gating queued")
    expect(page.get_by_role("link", name="competitor")).to_be_visible()
    rule = LabelFunction.objects.get()
    assert (rule.kind, rule.params, rule.reason) == (
        "keywords",
        {"keywords": ["Dropbox", "OneDrive"]},
        "names a competitor",
    )
    assert LabelFunctionVersion.objects.get().changed_by.username == "lead"


def test_a_bad_regex_is_named_as_one_types_and_the_error_goes_once_fixed(live_server, page, project, items):
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/rules/new/")
    page.get_by_label("Kind").select_option("regex")
    pattern = page.get_by_label("pattern")
    expect(pattern).to_be_visible()
    pattern.focus()
    page.keyboard.type("(Drop")
    error = page.locator("#err-regex-pattern")
    expect(error).to_have_text("RE2 cannot compile this pattern: missing ): (Drop")
    expect(pattern).to_have_attribute("aria-invalid", "true")
    expect(status(page)).to_contain_text("The rule cannot run yet")
    page.keyboard.type("box)")
    expect(status(page)).to_have_text("Would reject 3 of all 5 items.")
    expect(error).to_have_text("")
    page.get_by_label("case sensitive").check()
    page.get_by_label("pattern").fill("dropbox")
    expect(status(page)).to_have_text("Would reject 0 of all 5 items.")
    assert not LabelFunction.objects.exists()


def test_a_lead_edits_a_rule_then_deactivates_it(live_server, page, project, items):
    from judging.services import label_function_save

    rule = label_function_save(
        rule=LabelFunction(
            project=project, name="cheap", kind="keywords", params={"keywords": ["OneDrive"]}, reason="r"
        ),
        regate=False,
    )
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/rules/")
    page.get_by_role("link", name="cheap").click()
    expect(page.get_by_role("heading", name="Rule: cheap (version 1)")).to_be_visible()
    expect(status(page)).to_have_text("Would reject 2 of all 5 items.")  # runs at once on a saved rule
    keywords = page.get_by_label("keywords")
    keywords.fill("OneDrive\nmonth")
    expect(status(page)).to_have_text("Would reject 3 of all 5 items.")
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator(".message")).to_contain_text("saved as version 2")

    page.get_by_role("link", name="cheap").click()
    history = page.locator("table.history tbody tr")
    expect(history).to_have_count(2)
    expect(history.first.locator("td").nth(3)).to_have_text("Update")
    expect(history.first.locator("ul.changes li")).to_have_text(
        'params: {"keywords": ["OneDrive"]} → {"keywords": ["OneDrive", "month"]}'
    )
    expect(history.first).to_contain_text("lead")
    page.get_by_role("button", name="Deactivate").click()
    expect(page.get_by_role("heading", name="Rule: cheap (version 3, inactive)")).to_be_visible()
    expect(page.get_by_role("button", name="Activate")).to_be_visible()
    rule.refresh_from_db()
    assert not rule.active and rule.params == {"keywords": ["OneDrive", "month"]}
    assert Item.objects.count() == 5
