"""A lead who is not staff runs the project from its settings page in a real browser (headless Debian Chromium
driven by Playwright against pytest-django's ``live_server``), by keyboard: adds an SME, creates an account whose
owner then sets a password with the link, edits the reasons, removes a member, starts a run and re-gates. Untrusted
text (a username) is shown as text, never run."""

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from annotations.models import Membership, ProjectChange
from judging.models import JudgeRun
from tests.browser import log_in

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__larry_xss = 1">'


def tab_to(page, locator, presses: int = 12) -> None:
    """Press Tab until ``locator`` has the focus (at most ``presses`` times), then check that it has."""
    for _ in range(presses):
        if locator.evaluate("el => el === document.activeElement"):
            break
        page.keyboard.press("Tab")
    expect(locator).to_be_focused()


def test_a_lead_manages_members_by_keyboard_and_a_new_account_sets_its_password(
    live_server, page, browser, project, lead, sme
):
    assert not lead.is_staff
    get_user_model().objects.create_user("ana", email="ana@example.org")
    evil = get_user_model().objects.create_user(HOSTILE)
    Membership.objects.create(project=project, user=evil)
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/")
    link = page.get_by_role("link", name="Settings: members, reasons, runs")
    link.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=f"Settings: {project.name}")).to_be_visible()
    expect(page.locator("table.members")).to_contain_text(HOSTILE)  # shown as text
    assert page.evaluate("window.__larry_xss") is None

    # Add Ana as a lead by keyboard: her e-mail, Tab, the role's select (type to pick), Tab, Enter.
    add = page.locator("form.member-add")
    add.get_by_label("Username or e-mail").focus()
    page.keyboard.type("ana@example.org")
    page.keyboard.press("Tab")
    expect(add.get_by_label("Role")).to_be_focused()
    page.keyboard.press("P")  # "Project lead"
    page.keyboard.press("Tab")
    expect(add.get_by_role("button", name="Add member")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator(".message")).to_have_text("ana is now Project lead.")
    expect(page.locator("table.members")).to_contain_text("ana@example.org")

    # Create an account by keyboard; the page shows the set-password link once.
    create = page.locator("form.account-create")
    create.get_by_label("New username").focus()
    page.keyboard.type("bea")
    page.keyboard.press("Tab")
    page.keyboard.type("bea@example.org")
    tab_to(page, create.get_by_role("button", name="Create account"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Account bea created")).to_be_visible()
    set_password = page.get_by_label("Set-password link").input_value()
    assert set_password.startswith(f"{live_server.url}/set-password/")

    # Remove the SME by keyboard: the Remove button is labelled with the member's name.
    remove = page.get_by_role("button", name="Remove sme")
    remove.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".message")).to_have_text("sme is no longer a member.")
    expect(page.get_by_role("button", name="Remove sme")).to_have_count(0)
    log = page.locator("table.changes tbody tr")
    expect(log).to_have_count(3)
    expect(log.first).to_contain_text("Member removed")

    # Bea, in her own browser, opens the link, chooses a password and logs in: an SME of the project.
    context = browser.new_context()
    bea = context.new_page()
    try:
        bea.goto(set_password)
        bea.locator("#id_new_password1").fill("a-long-new-pass-417")  # Django's admin-styled form
        bea.locator("#id_new_password2").fill("a-long-new-pass-417")
        bea.locator("#id_new_password2").press("Enter")
        expect(bea.get_by_text("Your password has been set")).to_be_visible()
        log_in(bea, live_server, "bea", "a-long-new-pass-417")
        expect(bea.get_by_role("cell", name=project.name)).to_be_visible()
    finally:
        context.close()
    assert Membership.objects.get(user__username="bea", project=project).role == "sme"


def test_a_lead_edits_reasons_starts_a_run_and_regates_by_keyboard(live_server, page, project, lead):
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/settings/")
    reasons = page.get_by_label("Reject reasons")
    reasons.focus()
    page.keyboard.press("Control+A")
    page.keyboard.type("wrong price")
    page.keyboard.press("Enter")  # a new line in the textarea
    page.keyboard.type("<i>rude</i>")
    tab_to(page, page.get_by_role("button", name="Save reasons and guidelines"))
    page.keyboard.press("Enter")
    expect(page.locator(".message")).to_have_text("Saved: reject reasons.")
    expect(page.locator("table.changes")).to_contain_text("['wrong price', '<i>rude</i>']")
    project.refresh_from_db()
    assert project.reject_reasons == ["wrong price", "<i>rude</i>"]

    # A local classifier run: with no SME labels it fails, and says why, on its page.
    start = page.get_by_role("button", name="Start a local classifier run")
    start.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".message")).to_contain_text("started (local classifier")
    run = JudgeRun.objects.get(project=project)
    assert run.created_by == lead

    page.goto(f"{live_server.url}/projects/{project.slug}/settings/")
    regate = page.get_by_role("button", name="Apply rules and re-gate")
    regate.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".message")).to_contain_text("Re-gating queued")
    actions = list(ProjectChange.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["settings_edit", "run_start", "regate"]


def test_a_lead_who_lost_the_link_issues_a_new_one_by_keyboard_and_it_works(live_server, page, browser, project, lead):
    from annotations.project_settings import account_create

    account_create(project=project, username="cai", email="cai@example.org", role="sme", user=lead)  # link lost
    log_in(page, live_server, "lead", "lead-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/settings/")
    expect(page.get_by_role("button", name="Issue sme a new link to choose a password")).to_have_count(0)
    again = page.get_by_role("button", name="Issue cai a new link to choose a password")
    again.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="A new link for cai to choose a password")).to_be_visible()
    set_password = page.get_by_label("Set-password link").input_value()
    expect(page.locator("table.changes tbody tr").first).to_contain_text("Set-password link issued")
    context = browser.new_context()
    cai = context.new_page()
    try:
        cai.goto(set_password)
        cai.locator("#id_new_password1").fill("c-long-new-pass-902")
        cai.locator("#id_new_password2").fill("c-long-new-pass-902")
        cai.locator("#id_new_password2").press("Enter")
        expect(cai.get_by_text("Your password has been set")).to_be_visible()
    finally:
        context.close()
    assert get_user_model().objects.get(username="cai").check_password("c-long-new-pass-902")
