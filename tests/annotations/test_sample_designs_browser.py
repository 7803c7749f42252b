"""A lead draws an SME sample by a design from the project page in a real browser, and reads the estimate.

Headless Debian Chromium driven by Playwright against pytest-django's ``live_server``.
"""

import pytest
from playwright.sync_api import expect

from annotations.models import Item, SampleDraw
from tests.browser import log_in

pytestmark = pytest.mark.browser


def test_a_lead_draws_a_stratified_sample_from_the_project_page(live_server, page, project, lead):
    Item.objects.bulk_create(
        Item(project=project, external_id=f"{task}-{i}", prompt="q", response="r", task_type=task)
        for task, n in (("billing", 30), ("refunds", 10))
        for i in range(n)
    )
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    expect(page.locator("h2", has_text="Estimate")).to_be_visible()
    expect(page.locator(".note").first).to_contain_text("The set is empty.")
    form = page.locator("form.sample-draw")
    form.get_by_label("Size").fill("8")
    form.get_by_label("Design").select_option("stratified")
    form.get_by_label("Strata").select_option("task_type")
    form.get_by_label("Allocation").select_option("equal")
    form.get_by_label("Seed").fill("5")
    form.get_by_role("button", name="Draw for the SMEs").click()
    expect(page.locator(".message")).to_contain_text("8 of 40 items added to the SME queue")
    expect(page.locator("table.draws tbody tr")).to_have_count(1)
    expect(page.locator("table.draws")).to_contain_text("by task_type (equal)")
    draw = SampleDraw.objects.get()
    assert (draw.design, draw.seed, draw.created_by) == ("stratified", 5, lead)
    assert sorted(draw.members.values_list("stratum", flat=True)) == ["billing"] * 4 + ["refunds"] * 4
