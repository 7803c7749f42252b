"""The project page's teacher section in a real browser: a lead starts a run with the button and watches its
progress move without reloading, the run worked by a real Celery worker against the test server."""

import time

import pytest
from playwright.sync_api import expect

from distillation.models import TeacherRun
from tests.browser import log_in
from tests.conftest import make_items
from tests.distillation.test_teacher_runs import shell, use_teacher
from tests.judge_server import JudgeServer

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.postgres]


def test_a_lead_starts_a_teacher_run_and_watches_its_progress(live_server, page, project, lead, worker_env, worker):
    server = JudgeServer(latency=0.8).start()
    try:
        use_teacher(project, server.base_url, max_in_flight=1)
        make_items(project, [f"r{i}" for i in range(16)], prompt="How much is Plus?")
        log_in(page, live_server, "lead", "lead-pass-123")
        page.goto(f"{live_server.url}/projects/{project.slug}/")
        section = page.locator("#teacher-runs")
        expect(section).to_contain_text("No teacher run yet.")
        # The button (tasks run in-process in the live server): a one-item run of the prompts without response.
        section.get_by_label("Answer").select_option("missing")
        section.get_by_role("button", name="Start a teacher run").click()
        expect(section.locator("tr[data-run]")).to_have_count(1)
        expect(section.get_by_test_id("progress")).to_have_text("0 / 0")
        expect(section).to_contain_text("Prompts without a response")

        # A run on the worker: the section refreshes itself while it runs.
        shell(worker_env, f"teacher_run_create(project=Project.objects.get(pk={project.pk}), selection='all')")
        run = TeacherRun.objects.latest("id")
        page.reload()
        progress = section.locator(f'tr[data-run="{run.pk}"]').get_by_test_id("progress")
        seen = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen.add(progress.inner_text())
            if "16 / 16" in seen:
                break
            time.sleep(0.2)
        assert "16 / 16" in seen and len(seen) >= 2, seen  # it moved on the page without a reload
        row = section.locator(f'tr[data-run="{run.pk}"]')
        expect(row).to_contain_text("finished")
        expect(row.locator("td").nth(5)).to_have_text("16")  # written
    finally:
        server.stop()
