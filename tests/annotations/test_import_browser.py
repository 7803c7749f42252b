"""The import page in a real browser: a lead uploads a file with a bad line and reads the report.

Headless Debian Chromium driven by Playwright against pytest-django's
``live_server``; tasks run in-process (no broker), so the job is done when
the upload's redirect lands on its page.
"""

import json

import pytest
from playwright.sync_api import expect

from annotations.models import ImportJob, Item
from tests.browser import log_in

pytestmark = pytest.mark.browser


def test_a_lead_uploads_a_file_with_a_bad_line_and_sees_the_report(
    live_server, page, project, lead, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    content = "\n".join(
        [
            json.dumps(
                {"id": "b1", "prompt": "What does Plus cost?", "response": "$4 a month.", "human_label": "accept"}
            ),
            '{"id": "b2", "prompt": "<script>window.__pwned = 1</script>',
            json.dumps({"id": "b3", "prompt": "Refunds?", "response": "5 days."}),
        ]
    ).encode()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    page.get_by_role("link", name="Import items").click()
    page.get_by_label("File").set_input_files(
        {"name": "items.jsonl", "mimeType": "application/x-ndjson", "buffer": content}
    )
    expect(page.get_by_label("Import prior labels")).to_be_checked()
    page.get_by_role("button", name="Upload and import").click()

    job = ImportJob.objects.get()
    expect(page).to_have_url(f"{live_server.url}/projects/{project.slug}/import/{job.pk}/")
    expect(page.locator(".import-status")).to_have_text("done")
    report = page.locator(".import-report")
    expect(report.locator("tr", has_text="Items created")).to_contain_text("2")
    expect(report.locator("tr", has_text="Prior labels")).to_contain_text("1")
    expect(report.locator("tr", has_text="Lines not stored")).to_contain_text("1")
    bad = page.locator(".import-errors tbody tr")
    expect(bad).to_have_count(1)
    expect(bad.locator("td").first).to_have_text("2")
    expect(bad.locator("td").nth(1)).to_contain_text("invalid JSON")
    expect(page.locator("progress")).to_have_attribute("value", "100")
    assert page.evaluate("window.__pwned") is None and dialogs == []
    assert set(Item.objects.values_list("external_id", flat=True)) == {"b1", "b3"}

    with page.expect_download() as download:
        page.get_by_role("link", name="Download all 1 as CSV").click()
    assert open(download.value.path(), encoding="utf-8").read().splitlines()[1].startswith("2,invalid JSON")
