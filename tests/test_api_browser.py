"""The API's human side in a real browser: a lead finds their token, then tries the API in the interactive docs.

The docs (Swagger UI) are served from our own static files, so they work with no internet.
"""

import pytest
from playwright.sync_api import expect

from tests.annotations.test_review_browser import browser, log_in, page  # noqa: F401 (fixtures)
from tests.judging.test_training_sets import decide_items
from tests.services import require

pytestmark = pytest.mark.browser


def test_a_lead_copies_their_token_and_calls_the_api_from_the_docs(live_server, page, project, lead):  # noqa: F811
    require("chromium")
    decide_items(project)
    log_in(page, live_server, "lead", "lead-pass-123")
    page.get_by_role("link", name="API").click()
    key = page.locator("#api-token").inner_text().strip()
    assert len(key) == 40
    page.get_by_role("link", name="interactive docs").click()
    expect(page.get_by_text("Larry API").first).to_be_visible()
    operation = page.locator("#operations-items-projects_items_list")
    expect(operation).to_be_visible()
    # Logged in, the docs call the API with the browser's session: list the project's accepted items.
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.locator("input[placeholder=project_slug]").fill(project.slug)
    operation.locator("select").filter(has_text="pending").select_option("accept")
    operation.get_by_role("button", name="Execute").click()
    expect(operation.locator(".live-responses-table tbody .response-col_status").first).to_have_text("200")
    expect(operation.locator(".live-responses-table")).to_contain_text('"external_id": "a1"')
    expect(operation.locator(".live-responses-table")).not_to_contain_text('"external_id": "a2"')  # rejected
