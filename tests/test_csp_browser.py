"""Under the Content-Security-Policy every page still works in Chromium, and none logs a violation.

One headless Debian Chromium (tests/browser.py), one context per persona, logged in through the real form.
Each context listens for ``securitypolicyviolation`` events (from a script DevTools injects into every
document, which the page's policy does not govern), console messages about the policy, and page errors.
The first test shows the listeners catch what the policy refuses, so silence means no violation.
"""

import json

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from playwright.sync_api import Browser, BrowserContext, Page, expect

from judging.models import JudgeRun
from tests.browser import log_in
from tests.services import require
from tests.site_pages import PASSWORDS, build_site, query, site_pages

pytestmark = pytest.mark.browser

LISTEN = """
document.addEventListener("securitypolicyviolation", (e) => window.__larryViolation(
    `${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`
    + ` on ${location.pathname}`
), true);
"""


class Watched:
    """A browser context whose CSP violations, policy console messages and page errors are collected."""

    def __init__(self, browser: Browser):
        self.problems: list[str] = []
        self.context: BrowserContext = browser.new_context()
        self.context.expose_binding("__larryViolation", lambda source, text: self.problems.append(text))
        self.context.add_init_script(LISTEN)
        self.context.on("console", self._console)
        self.context.on("weberror", lambda error: self.problems.append(f"page error: {error.error}"))
        self.page: Page = self.context.new_page()

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.problems.append(f"console: {message.text}")

    def assert_clean(self) -> None:
        assert self.problems == [], "\n".join(self.problems)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser):
    contexts: list[Watched] = []

    def new() -> Watched:
        contexts.append(Watched(browser))
        return contexts[-1]

    yield new
    for context in contexts:
        context.close()


@pytest.fixture
def site(project):
    require("chromium")
    return build_site(project)


def visit_all(w: Watched, live_server, project, site, persona: str | None) -> int:
    """Open every GET page of ``persona``; returns how many."""
    pages = [p for p in site_pages(project, site) if p.persona == persona and p.method == "get" and not p.htmx]
    for listed in pages:
        params = query(listed, site)
        url = live_server.url + listed.url + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
        response = w.page.goto(url, wait_until="load")
        assert response.status == listed.status, f"{listed}: {response.status}"
    return len(pages)


def test_the_listeners_catch_what_the_policy_refuses(live_server, watched, db):
    require("chromium")
    w = watched()
    w.page.goto(live_server.url + reverse("login"))
    w.page.evaluate(
        """() => {
        const script = document.createElement("script");
        script.textContent = "window.__ran = 1";
        document.body.append(script);
        const div = document.createElement("div");
        div.setAttribute("style", "color: red");
        document.body.append(div);
    }"""
    )
    expect(w.page.locator("h1")).to_have_text("Log in")
    w.page.wait_for_timeout(200)
    assert w.page.evaluate("window.__ran") is None
    assert any(p.startswith("script-src") for p in w.problems), w.problems
    assert any(p.startswith("style-src") for p in w.problems), w.problems


@pytest.mark.parametrize("persona", [None, "sme", "lead", "staff", "root"], ids=str)
def test_every_page_of_each_persona_loads_without_a_violation(live_server, watched, project, site, persona):
    w = watched()
    if persona:
        log_in(w.page, live_server, persona, PASSWORDS[persona])
    visited = visit_all(w, live_server, project, site, persona)
    assert visited >= 3
    w.assert_clean()


def test_the_review_keys_work_without_a_violation(live_server, watched, project, site):
    w = watched()
    log_in(w.page, live_server, "sme", PASSWORDS["sme"])
    w.page.goto(live_server.url + reverse("annotations:review", args=[project.slug]))
    card = w.page.locator("#review-card")
    first = card.locator(".response").inner_text()
    w.page.keyboard.press("?")
    expect(w.page.locator("dialog#keys")).to_be_visible()
    w.page.keyboard.press("Escape")
    w.page.keyboard.press("a")
    expect(card.locator(".response")).not_to_have_text(first)
    second = card.locator(".response").inner_text()
    w.page.keyboard.press("2")
    w.page.keyboard.press("r")
    expect(card.locator(".response")).not_to_have_text(second)
    w.page.keyboard.press("u")
    expect(card.locator(".response")).to_have_text(second)
    w.page.keyboard.press("s")
    expect(card.locator(".response")).not_to_have_text(second)
    w.page.keyboard.press("c")
    w.page.keyboard.type("a comment")
    w.page.keyboard.press("Escape")
    expect(card).to_contain_text("1 of")  # one decision kept: accepted, rejected, the reject undone
    w.assert_clean()


def test_an_import_upload_and_an_htmx_poll_work_without_a_violation(
    live_server, watched, project, site, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    w = watched()
    log_in(w.page, live_server, "lead", PASSWORDS["lead"])
    w.page.goto(live_server.url + reverse("annotations:import", args=[project.slug]))
    line = json.dumps({"id": "u1", "prompt": "Upload?", "response": "Yes.", "human_label": "accept"})
    w.page.get_by_label("File").set_input_files(
        {"name": "u.jsonl", "mimeType": "application/x-ndjson", "buffer": line.encode()}
    )
    w.page.get_by_role("button", name="Upload and import").click()
    expect(w.page.locator(".import-status")).to_have_text("done")

    running = site["running_run"]
    w.page.goto(live_server.url + reverse("judging:run_detail", args=[project.slug, running.pk]))
    progress = w.page.locator("#run-progress")
    expect(progress).to_have_attribute("hx-trigger", "every 1s")
    with w.page.expect_response(lambda r: r.request.headers.get("hx-request") == "true") as polled:
        pass
    assert polled.value.status == 200
    JudgeRun.objects.filter(pk=running.pk).update(status="finished")
    expect(progress).not_to_have_attribute("hx-trigger", "every 1s", timeout=5000)  # swapped by the poll
    w.assert_clean()


def test_the_api_docs_try_the_api_without_a_violation(live_server, watched, project, site):
    w = watched()
    log_in(w.page, live_server, "lead", PASSWORDS["lead"])
    w.page.goto(live_server.url + reverse("api_docs"))
    operation = w.page.locator("#operations-items-projects_items_list")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.locator("input[placeholder=project_slug]").fill(project.slug)
    operation.get_by_role("button", name="Execute").click()
    expect(operation.locator(".live-responses-table tbody .response-col_status").first).to_have_text("200")
    w.assert_clean()


def test_the_admin_works_without_a_violation(live_server, watched, project, site):
    w = watched()
    log_in(w.page, live_server, "root", PASSWORDS["root"])
    # A list action: dry-run the label functions (a page of its own).
    w.page.goto(live_server.url + reverse("admin:judging_labelfunction_changelist"))
    w.page.locator("#action-toggle").check()
    w.page.locator("select[name=action]").select_option("dry_run")
    w.page.get_by_role("button", name="Go").click()
    expect(w.page.get_by_text("Nothing was changed")).to_be_visible()
    # A form with a JavaScript widget (the permissions' two-list filter), saved.
    group = get_user_model()._meta.apps.get_model("auth", "Group").objects.get()
    w.page.goto(live_server.url + reverse("admin:auth_group_change", args=[group.pk]))
    w.page.locator("#id_permissions_from option").first.dblclick()
    expect(w.page.locator("#id_permissions_to option")).to_have_count(1)
    w.page.get_by_role("button", name="Save", exact=True).click()
    expect(w.page.locator(".messagelist")).to_contain_text("was changed successfully")
    assert group.permissions.count() == 1
    w.assert_clean()
