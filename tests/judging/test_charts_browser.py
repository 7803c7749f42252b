"""The charts in a real browser: the funnel's bars are drawn, reached with Tab and followed with Enter into the
items list filtered to the bar's count; the runs chart has one mark per finished run, its kappa and n in the
text a screen reader reads. Headless Debian Chromium driven by Playwright against pytest-django's
``live_server``; screenshots go to /tmp/charts-*.png for a person to look at."""

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from judging.models import JudgeRun, Verdict
from judging.selectors import funnel, run_agreement
from tests.browser import log_in
from tests.judging.test_items_list import build_story

pytestmark = pytest.mark.browser


def test_the_funnel_chart_is_drawn_and_a_bar_opens_its_items_by_keyboard(live_server, page, project, sme, lead):
    build_story(project, sme)
    figures = funnel(project)
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    bars = page.locator("svg.funnel-chart .funnel-bar")
    expect(bars.first).to_be_visible()
    for stage in ("imported", "accepted", "rejected", "pending"):
        box = page.locator(f'svg.funnel-chart [data-stage="{stage}"] rect.bar').bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0, stage
    imported = page.locator('svg.funnel-chart [data-stage="imported"] rect.bar').bounding_box()
    accepted = page.locator('svg.funnel-chart [data-stage="accepted"] rect.bar').bounding_box()
    assert accepted["width"] == pytest.approx(imported["width"] * figures["accepted"] / figures["imported"], abs=1)
    page.locator("svg.funnel-chart").screenshot(path="/tmp/charts-funnel.png")

    # Tab from the top of the page until the accepted bar has the focus, then Enter.
    target = page.locator('svg.funnel-chart a[data-stage="accepted"]')
    for _ in range(80):
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            break
    expect(target).to_be_focused()
    share = 100 * figures["accepted"] / figures["imported"]
    text = f"accepted: {figures['accepted']} items, {share:.1f} % of the {figures['imported']} imported"
    expect(target).to_have_attribute("aria-label", text)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{live_server.url}/projects/{project.slug}/items/?outcome=accept")
    expect(page.locator("p.count")).to_contain_text(f"{figures['accepted']} items match the filter")
    expect(page.locator("#items-table tbody tr[data-href]")).to_have_count(figures["accepted"])


def test_the_runs_chart_has_a_mark_per_finished_run_with_kappa_and_n(live_server, page, project, sme, lead):
    story = build_story(project, sme)
    second = JudgeRun.objects.create(
        project=project, backend="openai", model="judge-8b", status="finished", finished_at=timezone.now(),
        config={"price_in_per_million": "1"}, tokens_in=5000,
    )  # fmt: skip
    for item in project.items.all():
        Verdict.objects.create(run=second, item=item, verdict="reject")
    JudgeRun.objects.create(project=project, backend="openai", model="unfinished", status="running")
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/gating-policy/")
    marks = page.locator("svg.runs-chart a.run-mark")
    expect(marks).to_have_count(2)
    for mark, run in zip(marks.all(), [story["run"], second], strict=True):
        got = run_agreement(run, interval=True)
        label = mark.get_attribute("aria-label")
        kappa = "Cohen's κ undefined" if got["cohen_kappa"] is None else f"Cohen's κ {got['cohen_kappa']:.3f}"
        assert kappa in label and f"n = {got['n']} SME-labelled items" in label and f"Run {run.pk} " in label
        box = mark.locator("rect.bar").bounding_box()
        assert box is not None
    page.locator("figure.runs-chart").screenshot(path="/tmp/charts-runs.png")
    marks.last.focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{live_server.url}{second.get_absolute_url()}")
