"""Browser fixtures for the UI tests: one headless Debian Chromium per module, a fresh context per test.

A pytest plugin (``pytest_plugins`` in tests/conftest.py), so every test can
ask for ``page``; mark browser test modules ``pytestmark = pytest.mark.browser``.
Playwright drives
``/usr/bin/chromium`` (never a downloaded browser) against pytest-django's
``live_server``.
"""

import os

import pytest
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.services import require

# Playwright's sync API runs an event loop in this thread; without this Django
# refuses ORM calls made from the test body (SynchronousOnlyOperation).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Browser:
    """One headless Chromium for the module, closed (with Playwright) at the end."""
    require("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Page:
    """A fresh browser context (no cookies) and page per test."""
    context = browser.new_context()
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def log_in(page: Page, live_server, username: str, password: str) -> None:
    """Log in through the real form at /login/ and wait for the redirect to the project list."""
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(live_server.url + reverse("annotations:project_list"))
