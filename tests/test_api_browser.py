"""The API's human side in a real browser: a lead finds their token, then tries the API in the interactive docs.

The docs (Swagger UI) are served from our own static files, so they work with no internet.
"""

import hashlib
from pathlib import Path

import pytest
from playwright.sync_api import expect

from distillation.models import TrainingSet
from tests.browser import log_in
from tests.distillation.test_training_sets import decide_items
from tests.services import require

pytestmark = pytest.mark.browser


def test_a_lead_copies_their_token_and_calls_the_api_from_the_docs(live_server, page, project, lead):
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


def test_a_lead_snapshots_a_training_set_and_downloads_it(live_server, page, project, lead):
    require("chromium")
    decide_items(project)
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    page.get_by_role("link", name="Training sets").click()
    page.get_by_label("Format").select_option("judge")
    page.get_by_label("Validation share").fill("0")
    page.get_by_label("System prompt").fill("<script>alert(1)</script> You judge answers.")
    page.get_by_role("button", name="Snapshot").click()
    expect(page.locator("#training-set-status")).to_contain_text("ready")
    training_set = TrainingSet.objects.get()
    expect(page.get_by_text(training_set.sha256)).to_be_visible()
    expect(page.locator("pre").filter(has_text="<script>alert(1)</script>")).to_be_visible()  # shown, not run
    with page.expect_download() as download:
        page.get_by_role("link", name="train", exact=True).click()
    body = Path(download.value.path()).read_bytes()
    assert hashlib.sha256(body).hexdigest() == training_set.files["train"]["sha256"]
    assert len(body.splitlines()) == training_set.rows_train == 8  # 9 decided, f2 repeats f1
